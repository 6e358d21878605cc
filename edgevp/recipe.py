"""Recipes: a YAML mapping plus `-s key=value` overrides resolved into a checked RunConfig.

The `prompt` section is checked against the schema the method registry gives for `method` (built-in method
configs resolve without importing torch, so run directories can be read on a device without it).
"""
from __future__ import annotations

from .config import RunConfig, from_dict, parse_override, set_nested
from .errors import ConfigError
from .registry import method_config


def build_run_config(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve defaults < `data` < overrides into a checked RunConfig (the prompt schema comes from the method).

    Example:
        >>> cfg = build_run_config({"method": "vpt"}, ["prompt.num_tokens=50", "train.lr=0.01"])
    """
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (data or {}).items()}
    for item in overrides:
        path, value = parse_override(item)
        set_nested(data, path, value)
    method = data.get("method", RunConfig.method)
    if not isinstance(method, str):
        raise ConfigError(f"method: expected a string, got {method!r}")
    prompt = from_dict(method_config(method), data.pop("prompt", None), "prompt")
    cfg = from_dict(RunConfig, data)
    cfg.prompt = prompt
    return cfg
