"""The analytic MAC model against torch's FLOP counter (explicit attention, so nothing is skipped)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgevp.cost import vit_macs

from ..conftest import tiny_model


def _counted_macs(model, x) -> int:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() // 2


@pytest.mark.parametrize("method, prompt", [
    ("linear", {}), ("vpt", {"num_tokens": 5, "deep": True}), ("vpt", {"num_tokens": 5, "deep": False}),
    ("vpt", {"num_tokens": 4, "tokens_per_layer": [4, 0, 2, 1, 0, 3]}), ("e2vpt", {"num_tokens": 3, "num_kv": 2}),
])
def test_analytic_macs_equal_counted_macs(method, prompt, digits_batch):
    model = tiny_model(method, prompt).eval()
    counted = _counted_macs(model, digits_batch[:1])
    analytic = vit_macs(model.info, 10, model.method.extra_tokens())
    assert analytic.total == counted


def test_prompt_overhead_grows_with_tokens():
    bare = tiny_model("linear")
    base = vit_macs(bare.info, 10).total
    m10 = tiny_model("vpt", {"num_tokens": 10})
    m20 = tiny_model("vpt", {"num_tokens": 20})
    assert base < vit_macs(m10.info, 10, m10.method.extra_tokens()).total < \
        vit_macs(m20.info, 10, m20.method.extra_tokens()).total
