"""The suite's memo of `torch.onnx.export` (tests/support.py ExportMemo) answers from its cache only for a module
equal in class, attributes and tensor values, with the same argument shapes and options."""
from __future__ import annotations

import torch

from ..support import ExportMemo


class Scaled(torch.nn.Module):
    def __init__(self, factor: float = 2.0):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.factor = factor

    def forward(self, x):
        return self.linear(x) * self.factor


def test_a_hit_needs_equal_values_attributes_shapes_and_options(tmp_path):
    calls = []

    def fake_export(model, args, f, **kw):
        calls.append(kw)
        f.write_bytes(repr((model.factor, model.linear.weight.sum().item(), kw)).encode())

    memo = ExportMemo(tmp_path / "memo", fake_export)
    torch.manual_seed(0)
    a = Scaled()
    b = Scaled()
    b.load_state_dict(a.state_dict())
    x = (torch.rand(2, 4),)
    memo(a, x, tmp_path / "a.onnx", dynamo=True)
    memo(b, (torch.rand(2, 4),), tmp_path / "b.onnx", dynamo=True)  # equal content, other input values: a hit
    assert len(calls) == 1 and (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    with torch.no_grad():
        b.linear.bias[0] += 1e-6
    c = Scaled(factor=3.0)
    c.load_state_dict(a.state_dict())
    for module, args, kw in ((b, x, {"dynamo": True}),  # one tensor value differs
                             (c, x, {"dynamo": True}),  # a plain attribute differs
                             (a, (torch.rand(1, 4),), {"dynamo": True}),  # another input shape
                             (a, x, {"dynamo": False})):  # other options
        before = len(calls)
        memo(module, args, tmp_path / "m.onnx", **kw)
        assert len(calls) == before + 1
    assert (memo.hits, memo.misses) == (1, 5)


def test_unpicklable_modules_and_buffers_as_destinations_are_exported_for_real(tmp_path):
    import io

    calls = []
    memo = ExportMemo(tmp_path / "memo", lambda model, args, f, **kw: calls.append(f))
    a = Scaled()
    a.hook = lambda x: x  # a local function: cannot be pickled
    memo(a, (torch.rand(2, 4),), tmp_path / "a.onnx")
    memo(a, (torch.rand(2, 4),), tmp_path / "a.onnx")
    memo(Scaled(), (torch.rand(2, 4),), io.BytesIO())
    assert len(calls) == 3 and memo.hits == 0
