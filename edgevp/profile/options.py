"""Options of `edgevp profile` / `edgevp.profile(target, opts)`: one dataclass, checked on construction (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from ..config import check_options
from ..errors import ConfigError


@dataclass
class ProfileOptions:
    """What to time and how; the CLI options have the same names (`json_out` aside, which only prints).

    `against`: artifacts to compare with (`NAME=PATH` labels one); `backend`: ort | trt | trtexec | torch (a run
    directory in PyTorch); `compile`: time torch.compile instead of eager (torch on cuda); `task`: a pack's task id,
    or `mixed` (the batch cycles over the tasks; the default)."""

    against: list[Path] = field(default_factory=list)
    backend: str = "ort"  # checked where the variants are made (profile.run.profile_targets)
    device: str = "cpu"
    compile: bool = False
    batch: list[int] = field(default_factory=lambda: [1])
    warmup: int = 10
    iters: int = 100
    rounds: int = 3
    threads: int | None = None
    out: Path | None = None  # default: RUN/profile, or the artifact's folder/profile
    task: str | None = None

    def __post_init__(self):
        check_options(self)
        if self.warmup < 0 or self.iters < 1 or self.rounds < 1 or not self.batch or any(b < 1 for b in self.batch):
            raise ConfigError("--warmup >= 0, --iters >= 1, --rounds >= 1 and --batch >= 1 are required")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads / --threads: must be >= 1, got {self.threads}")
        if self.compile and self.backend != "torch":
            raise ConfigError("--compile applies to --backend torch (a run directory in PyTorch)")

    @property
    def timed_backend(self) -> str:
        """The backend the measuring runs: `torch-compile` for torch with --compile."""
        return "torch-compile" if self.compile else self.backend
