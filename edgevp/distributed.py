"""Data parallelism under torchrun: the process group and the few collectives training, evaluation and scoring use.

Launched by torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the environment, WORLD_SIZE > 1) `init_from_env` joins the
process group (`gloo` on CPU; `cpu:gloo,cuda:nccl` where CUDA is available) with a timeout, so a dead rank makes the
others fail instead of waiting forever. Otherwise every function here is a no-op for one process (world size 1,
rank 0), and the single-process code paths never call a collective.

Exactness: every rank walks the same global order (EpochSampler) and takes a contiguous slice of each global batch
(`batch_slice`; slices may be uneven or empty); the loss on a rank is the sum of its per-sample losses divided by
the global batch count, so the sum of the ranks' gradients equals the one-process gradient of the batch mean.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, ConfigError, EdgevpError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600  # a collective waits this long for a silent peer (EDGEVP_DIST_TIMEOUT overrides)
_state: dict[str, Any] = {"initialized": False, "backend": None}


class RankLostError(EdgevpError):
    """A collective failed: another rank died, was killed or stopped answering (the timeout)."""


@contextlib.contextmanager
def _peers():
    """Turn a failed collective (gloo/NCCL raise RuntimeError) into one clear line."""
    try:
        yield
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:160]
        raise RankLostError(f"rank {rank()}: another torchrun rank stopped or stopped answering ({detail})",
                            "see that rank's error; the last checkpoint is kept: edgevp train --resume RUN") from None


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def active() -> bool:
    """Whether this process is one of several torchrun ranks (the process group is joined on first use)."""
    return env_world_size() > 1


def init_from_env() -> None:
    """Join torchrun's process group once (idempotent; a no-op for one process). On CUDA the device is LOCAL_RANK."""
    if not active() or _state["initialized"]:
        return
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("EDGEVP_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    _state.update(initialized=True, backend=backend)


def world_size() -> int:
    return env_world_size() if active() else 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if active() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    return _state["backend"]


def barrier() -> None:
    if active():
        init_from_env()
        with _peers():
            torch.distributed.barrier()


def shutdown() -> None:
    """Leave the process group (end of a torchrun rank's work)."""
    if _state["initialized"]:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _state.update(initialized=False, backend=None)


def check_batch(batch_size: int, world: int | None = None, what: str = "data.batch_size") -> None:
    """Refuse more ranks (this world, or `world`) than samples in a global batch (exit 2); an uneven split is fine
    (slices differ by one sample)."""
    n = world_size() if world is None else world
    if n > batch_size:
        raise echoed(ConfigError(f"{n} processes for a global batch of {batch_size} ({what}): a rank would never "
                                 "get a sample", f"use at most {batch_size} processes, or raise {what}"))


def echoed(error: EdgevpError) -> EdgevpError:
    """Mark `error` as raised on every rank at the same point (`collective`: the ranks may still meet at a barrier)
    and as one rank 0 prints, so the other ranks exit with its code silently (one line, not N)."""
    error.echoed_by_main = not is_main()
    error.collective = active()
    return error


def batch_slice(n: int, world: int | None = None, r: int | None = None) -> slice:
    """This rank's contiguous slice of a global batch of `n` samples (sizes differ by at most one; may be empty)."""
    world = world_size() if world is None else world
    r = rank() if r is None else r
    return slice(n * r // world, n * (r + 1) // world)


def slice_sizes(n: int) -> list[int]:
    """The per-rank sizes of a global batch of `n`."""
    w = world_size()
    return [batch_slice(n, w, r).stop - batch_slice(n, w, r).start for r in range(w)]


def sum_all(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (one all-reduce) and return it; unchanged for one process."""
    if active():
        init_from_env()
        with _peers():
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def sum_numbers(values: Sequence[float]) -> list[float]:
    """Sums over ranks of a few numbers (metric sums: loss, correct, count), in float64 on the CPU (gloo)."""
    if not active():
        return list(values)
    return sum_all(torch.tensor(list(values), dtype=torch.float64)).tolist()


class GradientReducer:
    """Sums the trainable gradients over ranks with one flat all-reduce per step, plus a few numbers riding along
    (loss sum, correct, count, stop flag). A parameter's gradient stays None when it is None on every rank (as
    the optimizer then skips it, exactly like one process)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], extras: int):
        self.params = list(params)
        self.extras = extras
        self.numel = sum(p.numel() for p in self.params)

    @property
    def bytes_per_step(self) -> int:
        """What one step all-reduces: float32 gradients, one presence flag per tensor, the extra numbers."""
        return 4 * (self.numel + len(self.params) + self.extras)

    def reduce(self, extras: Sequence[float]) -> list[float]:
        device = self.params[0].device
        flat = torch.empty(self.numel + len(self.params) + self.extras, dtype=torch.float32, device=device)
        i = 0
        for k, p in enumerate(self.params):
            n = p.numel()
            flat[i:i + n] = 0.0 if p.grad is None else p.grad.detach().reshape(-1).float()
            flat[self.numel + k] = 0.0 if p.grad is None else 1.0
            i += n
        flat[self.numel + len(self.params):] = torch.tensor(list(extras), dtype=torch.float32)
        sum_all(flat)
        i = 0
        for k, p in enumerate(self.params):
            n = p.numel()
            if flat[self.numel + k] > 0:
                p.grad = flat[i:i + n].view_as(p).to(p.dtype).clone()
            else:
                p.grad = None
            i += n
        return flat[self.numel + len(self.params):].tolist()


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result (or its EdgevpError) to every rank; for one process, `fn()`.

    The file-system work of a run (lock, checks, run directory, resume state) happens once, on rank 0; a bad input
    found there stops every rank with the same line and exit code instead of leaving them waiting."""
    if not active():
        return fn()
    init_from_env()
    import torch.distributed as dist

    box: list[Any] = [None]
    error: BaseException | None = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except EdgevpError as e:
            error, box[0] = e, ("error", e)
        except BaseException as e:  # noqa: BLE001 (the others get a line; rank 0 re-raises its own)
            error, box[0] = e, ("error", EdgevpError(f"rank 0 failed: {type(e).__name__}: {e}"))
        try:
            pickle.dumps(box[0])
        except Exception:  # an unpicklable result or error: the others get a plain error
            box[0] = ("error", EdgevpError("rank 0 failed (see its output)"))
    with _peers():
        dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise echoed(error) if isinstance(error, EdgevpError) else error
    kind, value = box[0]
    if kind == "error":
        raise echoed(value)
    return value


def sharded_indices(n: int) -> range:
    """This rank's contiguous share of `n` evaluation samples."""
    s = batch_slice(n)
    return range(s.start, s.stop)


class ShardedBatches:
    """Batches of a global order for this rank: for each global batch of `batch_size` indices, this rank's slice.
    Yields (x, y, global count); x and y are None when the slice is empty. Every rank yields as many batches."""

    def __init__(self, dataset, order: Sequence[int] | Iterator[int], batch_size: int, num_workers: int = 0):
        from torch.utils.data import DataLoader

        order = list(order)
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.slices = [b[batch_slice(len(b))] for b in self.batches]
        present = [s for s in self.slices if s]
        self._loader = DataLoader(dataset, batch_sampler=present, num_workers=num_workers,
                                  generator=torch.Generator().manual_seed(0)) if present else None

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        it = iter(self._loader) if self._loader is not None else None
        for full, mine in zip(self.batches, self.slices):
            if mine:
                x, y = next(it)
                yield x, y, len(full)
            else:
                yield None, None, len(full)


def launch(nproc: int, edgevp_args: list[str]) -> int:
    """Run `python -m edgevp EDGEVP_ARGS` on `nproc` local processes through torchrun's own launcher (standalone
    rendezvous); returns rank 0's exit code (else the first failure's), 130 when the launcher was interrupted."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "edgevp", *edgevp_args]))
        return 0
    except ChildFailedError as e:
        # rank 0's code; a rank ended by the launcher's SIGTERM (negative) is not the cause
        codes = [f.exitcode for r, f in sorted(e.failures.items(), key=lambda rf: (rf[0] != 0, rf[1].timestamp))]
        return next((c for c in codes if c > 0), EXIT_FAILURE)
    except SignalException:
        return EXIT_INTERRUPTED
