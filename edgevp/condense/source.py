"""The trained run a condensation starts from: its config, model, data loaders and accuracy evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..config import RunConfig
from ..data import Splits, load_data, make_loader
from ..errors import ConfigError
from ..evaluation import evaluator, resolve_device
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
        """Training images without augmentation, for importance scores (under torchrun: this rank's slices)."""
        self.splits.train.train = False
        if distributed.active():
            return distributed.ShardedBatches(self.splits.train, range(len(self.splits.train)), self.batch_size)
        return make_loader(self.splits.train, self.batch_size)

    def top1(self, model: PromptedModel) -> dict[str, float | None]:
        model.to(self.device)
        val = evaluator(self.splits.val, self.batch_size, self.device)(model)["top1"]
        test = None
        if self.splits.test is not None:
            test = evaluator(self.splits.test, self.batch_size, self.device)(model)["top1"]
        return {"val": val, "test": test}


def open_source(src: str | Path, what: str, other: str, has_units: bool = False, has_masks: bool = False) -> Source:
    """Load run `src` for condensation `what`; its method must declare prompt units (`has_units`, Prompt
    Condensation) or token/segment masks (`has_masks`, E²VPT pruning); `other` names the alternative."""
    cfg, model, meta = load_run(src)
    method = model.method
    if (has_units and not method.prompt_units()) or (has_masks and method.mask_units() is None):
        kind = "prompt units to score" if has_units else "token/segment masks"
        raise ConfigError(f"{what} needs a run whose method has {kind}; '{src}' is a '{cfg.method}' run, which has "
                          "none",
                          f"{other}; LoR-VP and the linear probe have no prompts to condense")
    device = resolve_device(cfg.train.device)
    model.to(device)
    return Source(Path(src), cfg, model, int(meta["num_classes"]), device, load_data(cfg.data, model.info),
                  cfg.data.eval_batch_size or cfg.data.batch_size)
