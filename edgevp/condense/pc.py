"""Prompt Condensation (Kim et al., "Do We Really Need a Large Number of Visual Prompts?"; docs/condensing.md says
what the options do): score every prompt unit with a gradient-based gate score, rank all of them together (or per
group, or at random for the baseline), physically remove the dropped ones, then fine-tune only the kept prompts and
the head for a short schedule. The result is a normal run directory of the same method with fewer prompts.

Everything method-specific comes from the method's hooks (`prompt_units`, `set_unit_gates`, `keep_units`,
`extra_tokens`): VPT condenses its tokens per layer, E²VPT its visual prompts with the masks baked in (the key-value
prompts stay), and a plug-in method whatever units it declares.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..config import RunConfig, check_options
from ..console import Reporter
from ..cost import vit_macs
from ..errors import ConfigError
from ..model import build_model
from ..prompts.base import PromptedModel
from ..runs import RunDir
from .artifacts import write_condense_artifacts
from .scores import Aggregate, gate_scores
from .select import Ranking, count_for_budget, keep_masks
from .source import open_source

DEFAULT_KEEP = 0.3


@dataclass
class PCOptions:
    """Options of `edgevp condense --method pc`; give at most one of `keep`, `keep_count`, `max_overhead` (none:
    keep 30 %)."""

    keep: float | None = None  # fraction of all prompts to keep, in (0, 1]
    keep_count: int | None = None  # or an exact count
    max_overhead: float | None = None  # or a MAC budget: extra MACs relative to the bare backbone (0.05 = 5 %)
    ranking: Ranking = "global"
    score: Aggregate = "abs_batch"
    score_batches: int | None = None  # batches of training data used for scoring (None: all)
    finetune_epochs: int | None = None  # None: 30 % of the source run's epochs, at least 1
    lr: float | None = None  # None: a tenth of the source run's lr (a fresh optimizer at full lr undoes training)
    seed: int = 0  # for the random ranking

    def __post_init__(self):
        check_options(self)
        budgets = [n for n in ("keep", "keep_count", "max_overhead") if getattr(self, n) is not None]
        if len(budgets) > 1:
            raise ConfigError(f"give one of keep, keep_count and max_overhead, not {' and '.join(budgets)}")
        if not budgets:
            self.keep = DEFAULT_KEEP
        if self.keep is not None and not 0 < self.keep <= 1:
            raise ConfigError(f"keep must be in (0, 1], got {self.keep}")
        if self.keep_count is not None and self.keep_count < 1:
            raise ConfigError(f"keep_count must be >= 1, got {self.keep_count}")
        if self.max_overhead is not None and self.max_overhead < 0:
            raise ConfigError("max_overhead must be >= 0: a budget below the bare backbone's cost keeps nothing")
        _check_schedule(self)


def _check_schedule(opts) -> None:
    """The fine-tuning options shared by both condensations."""
    if opts.score_batches is not None and opts.score_batches < 1:
        raise ConfigError(f"score_batches must be >= 1, got {opts.score_batches}")
    if opts.finetune_epochs is not None and opts.finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs must be >= 0, got {opts.finetune_epochs}")
    if opts.lr is not None and opts.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {opts.lr}")


def finetune_config(cfg: RunConfig, prompt, epochs: int, lr: float | None, warmup_epochs: float) -> RunConfig:
    """The source run's config with the condensed method's `prompt` config and a short fine-tuning schedule."""
    new = copy.deepcopy(cfg)
    new.name, new.prompt = None, prompt
    new.train.epochs, new.train.warmup_epochs = epochs, warmup_epochs
    if lr is not None:
        new.train.lr = lr
    return new


def condensed_state(model: PromptedModel, method_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A trainable state (checkpoint keys) of `model`'s head with a condensed method's `method_state`."""
    state = {k: v for k, v in model.trainable_state().items() if not k.startswith("method.")}
    state.update({f"method.{k}": v for k, v in method_state.items()})
    return state


def _keep_count(opts: PCOptions, total: int) -> int | None:
    """How many prompts `keep`/`keep_count` keep (None for a MAC budget, which needs the scores)."""
    if opts.keep_count is not None:
        if opts.keep_count > total:
            raise ConfigError(f"--keep-count must be in 1..{total}, got {opts.keep_count}")
        return opts.keep_count
    if opts.keep is not None:
        k = round(opts.keep * total)
        if k < 1:
            raise ConfigError(f"--keep {opts.keep:g} keeps no prompt of {total}",
                              f"keep at least {1 / total:.3g} (one prompt)")
        return k
    return None


def condense_pc(src: str | Path, out: str | Path, opts: PCOptions, reporter: Reporter | None = None) -> dict:
    """Condense run `src` into a new run directory `out`; returns the report (also saved there)."""
    from ..train import fit

    distributed.init_from_env()  # under torchrun: scores summed over ranks, rank 0 writes the condensed run
    rep = (reporter or Reporter()) if distributed.is_main() else Reporter(quiet=True)
    source = open_source(src, "Prompt Condensation", "E²VPT token pruning: --method e2vpt", has_units=True)
    cfg, model, num_classes = source.cfg, source.model, source.num_classes
    method = model.method
    total = sum(method.prompt_units())
    k = _keep_count(opts, total)

    def macs_for(counts: list[int]) -> int:
        return vit_macs(model.info, num_classes, method.extra_tokens(counts)).total

    bare_macs = vit_macs(model.info, num_classes).total
    budget = None
    if opts.max_overhead is not None:
        budget = int(bare_macs * (1 + opts.max_overhead))
        if macs_for([0] * len(method.prompt_units())) > budget:
            raise ConfigError(f"--max-overhead {opts.max_overhead:.1%} is below what this run costs without any "
                              "prompt unit (its key-value prompts)", "raise the budget")
    scores = gate_scores(model, source.scoring_loader(), opts.score, opts.score_batches)
    if k is None:
        k = count_for_budget(scores, macs_for, budget)
        if k == 0:
            raise ConfigError(f"--max-overhead {opts.max_overhead:.1%} leaves room for no prompt", "raise the budget")
    masks = keep_masks(scores, k, opts.ranking, opts.seed)
    counts = [int(m.sum()) for m in masks]
    epochs = opts.finetune_epochs if opts.finetune_epochs is not None else max(1, round(0.3 * cfg.train.epochs))
    prompt_cfg, method_state = method.keep_units(masks)
    new_cfg = finetune_config(cfg, prompt_cfg, epochs, opts.lr if opts.lr is not None else 0.1 * cfg.train.lr, 0.0)
    state = condensed_state(model, method_state)
    rep.log(f"keeping {k}/{total} prompts ({opts.ranking} ranking, score {opts.score}); per group: {counts}")

    before = source.top1(model)
    removed = build_model(new_cfg, num_classes)
    removed.load_trainable_state(state)
    after_removal = source.top1(removed)
    src_manifest = RunDir(src).manifest()
    result = fit(new_cfg, out=out, command=["edgevp", "condense", str(src)], init_state=state, reporter=rep,
                 extra_inputs={"condensed_from": {"run": str(Path(src).resolve()), "run_id": src_manifest["run_id"]}})
    report = {
        "method": "pc", "source_run": str(Path(src).resolve()), "ranking": opts.ranking,
        "score": f"gate |sum(p * dL/dp)| per prompt, aggregated {opts.score}", "score_batches": opts.score_batches,
        "kept": k, "total": total, "keep_ratio": k / total, "kept_per_layer": counts,
        "budget": {"keep": opts.keep, "keep_count": opts.keep_count, "max_overhead": opts.max_overhead},
        "finetune_epochs": epochs, "top1_before": before, "top1_after_removal": after_removal,
        "top1_after_finetune": {"val": result.best_val_top1, "test": result.test_top1},
        "macs": {"bare": bare_macs, "before": macs_for(method.prompt_units()), "after": macs_for(counts)},
        "params": {"prompt_before": model.param_summary()["prompt"], "prompt_after": result.params["prompt"]},
    }
    if distributed.is_main():
        write_condense_artifacts(RunDir(result.run_dir), report, scores, masks)
    return report
