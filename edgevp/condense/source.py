"""The trained run a condensation starts from: its config, model, data loaders and accuracy evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import Splits, make_loader
from ..errors import ConfigError
from ..model import load_run
from ..prompts.base import PromptedModel


@dataclass
class Source:
    path: Path
    cfg: RunConfig
    model: PromptedModel
    num_classes: int
    device: torch.device
    splits: Splits
    batch_size: int

    def scoring_loader(self):
        """Training images without augmentation, for importance scores."""
        self.splits.train.train = False
        return make_loader(self.splits.train, self.batch_size)

    def top1(self, model: PromptedModel) -> dict[str, float | None]:
        from ..train import evaluate

        model.to(self.device)
        val = evaluate(model, make_loader(self.splits.val, self.batch_size), self.device)["top1"]
        test = None
        if self.splits.test is not None:
            test = evaluate(model, make_loader(self.splits.test, self.batch_size), self.device)["top1"]
        return {"val": val, "test": test}


def open_source(src: str | Path, methods: tuple[str, ...], what: str, other: str) -> Source:
    """Load run `src`, which must be a run of one of `methods` (`what` names the condensation, `other` the
    alternative)."""
    from ..train import load_data, resolve_device

    cfg, model, meta = load_run(src)
    if cfg.method not in methods:
        raise ConfigError(f"{what} needs a {' or '.join(repr(m) for m in methods)} run; '{src}' is a "
                          f"'{cfg.method}' run",
                          f"{other}; LoR-VP and the linear probe have no prompts to condense")
    device = resolve_device(cfg.train.device)
    model.to(device)
    return Source(Path(src), cfg, model, int(meta["num_classes"]), device, load_data(cfg, model.info),
                  cfg.data.eval_batch_size or cfg.data.batch_size)
