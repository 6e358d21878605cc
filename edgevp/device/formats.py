"""The device bundle's file formats (engine names, labels, DeepStream and Triton configs) moved to
`edgevp.runtime.formats` (export and pack write through it, the device reads through it); this name stays for
existing imports."""
from ..runtime.formats import (ENGINE_RE, NETWORK_MODE, SCALING_FILTER, TRITON_DTYPE, check_engine_name,  # noqa: F401
                               deepstream_fidelity, deepstream_labels, engine_name, labels_txt, model_name,
                               nvinfer_config, nvinfer_scale, nvinfer_scale_error, parse_engine_name, preprocessing,
                               triton_config)
