"""Deploy forms and export targets: fold prompts into constants, write ONNX / ONNX Runtime / TensorRT artifacts."""
