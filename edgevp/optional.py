"""Optional heavy dependencies, imported when a command needs them; one table says which install brings each."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingError

# top-level module -> the pip extra of edgevp that installs it
EXTRAS = {"torch": "train", "torchvision": "train", "timm": "train", "safetensors": "train", "PIL": "train",
          "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "onnxsim": "onnx",
          "onnxconverter_common": "onnx", "matplotlib": "plot", "sklearn": "data", "skimage": "data"}
# modules no extra brings
HINTS = {"tensorrt": "on a Jetson it comes with JetPack; elsewhere pip install tensorrt"}
NAMES = {"tensorrt": "TensorRT", "onnxruntime": "ONNX Runtime"}


def install_hint(module: str) -> str:
    """The install that brings `module`, e.g. "pip install 'edgevp[onnx]'"."""
    top = module.split(".")[0]
    if top in EXTRAS:
        return f"pip install 'edgevp[{EXTRAS[top]}]'"
    return HINTS.get(top, f"pip install {top}")


def require(module: str, purpose: str, hint: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingError (exit 4) in one line: "TensorRT is not installed here; <purpose> needs
    it (<hint, or the install that brings it>)"."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        name = NAMES.get(top, module)
        state = "is not installed" if (e.name or "").split(".")[0] == top else f"cannot be imported ({e})"
        raise MissingError(f"{name} {state} here; {purpose} needs it", hint or install_hint(module)) from None


def optional(module: str) -> ModuleType | None:
    """`module`, or None where it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def pyplot() -> ModuleType | None:
    """matplotlib.pyplot drawing to files (the Agg backend), or None without the `plot` extra."""
    matplotlib = optional("matplotlib")
    if matplotlib is None:
        return None
    matplotlib.use("Agg")
    return optional("matplotlib.pyplot")
