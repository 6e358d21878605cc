"""The device side of a deployed artifact, torch-free (numpy, Pillow, ONNX Runtime or the TensorRT runtime):
`edgevp eval` (accuracy on an image folder or the export's `test.npz`), `edgevp predict` (top-k per image), the
preprocessing they share, and the files that make a TensorRT bundle drop into Jetson tooling (labels.txt, a
DeepStream nvinfer config, a Triton model repository)."""
