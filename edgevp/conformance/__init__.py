"""Conformance with the real device tools, torch-free: the TensorRT platforms a bundle is made for
(`platforms`), the graph rewrites that make an export import on all of them (`graph`), the documented rules of
TensorRT's ONNX importers, trtexec, DeepStream's nvinfer and Triton as data with their source lines (`rules`), the
checks that apply them (`checks`, `configs`), and `bundle.check_bundle`, what `edgevp check` and every export run."""
