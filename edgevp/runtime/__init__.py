"""The runtime layer: what both training and the device do to an image file, torch-free (numpy + Pillow).

It sits at the bottom of the stages: it imports no stage module (export, multitask, train, device, profile, ...)
and never torch, timm or torchvision, so a device without the training stack runs exactly the code training ran.

- `decode`: one image decoder (file -> uint8 H×W or H×W×3; 16-bit scaled, palette with transparency, CMYK, RGBA).
- `scan`: one folder scan (image extensions, hidden files, `._*` and `__MACOSX/` skipped, classes).
- `transform`: the resize / crop / normalise arithmetic, bit-identical on both sides.
- `feeds`: a multi-task pack's inputs (wire names, task ids, `tables.npz`).

And what a deployed artifact is and how it runs:

- `sidecar`: the precision recorded in an export's / pack's sidecar, read back in one place (`precision_of`).
- `sessions`: the one ONNX Runtime session factory (`open_session`).
- `engine`: the TensorRT engine runner and the engine sidecar check.
- `gpu`: the one GPU / Jetson probe (name, compute capability, Jetson board, release, clocks).
"""
