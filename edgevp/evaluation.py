"""Running a model over a data split: the device choice, mixed precision, and loss / top-1 / top-5."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import MissingError


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`; asking for CUDA without a GPU is exit 4."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MissingError(f"train.device={name} but no CUDA GPU is available", "use train.device=cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool):
    """bf16 (or fp16) autocast on CUDA when `enabled`; a no-op elsewhere."""
    if device.type != "cuda" or not enabled:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, amp: bool = False,
             gather: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) over a loader; with `gather`, the loader is this rank's shard and the sums are
    added over the torchrun ranks before dividing."""
    model.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=1).indices
        top1 += (pred[:, 0] == y).sum().item()
        top5 += (pred == y[:, None]).any(dim=1).sum().item()
        n += len(y)
    if gather:
        from . import distributed

        loss_sum, top1, top5, n = distributed.sum_numbers([loss_sum, top1, top5, n])
    n = max(n, 1)
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}


def evaluator(ds, batch_size: int, device: torch.device, amp: bool = False, num_workers: int = 0):
    """`model -> metrics` over dataset `ds`: one loader in one process; under torchrun each rank evaluates a
    contiguous shard and the sums are gathered, so every rank gets the same metrics."""
    from . import distributed
    from .data import make_loader

    if not distributed.active():
        loader = make_loader(ds, batch_size, num_workers)
        return lambda model: evaluate(model, loader, device, amp)
    from torch.utils.data import Subset

    loader = make_loader(Subset(ds, distributed.sharded_indices(len(ds))), batch_size, num_workers)
    return lambda model: evaluate(model, loader, device, amp, gather=True)
