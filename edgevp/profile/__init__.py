"""Measure what prompts cost: graph MACs, parameters, sizes and latency — importable without torch, so that a
device with only TensorRT / ONNX Runtime (a Jetson) can profile exported artifacts."""
