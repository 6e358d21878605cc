"""Prompt Condensation (Kim et al., "Do We Really Need a Large Number of Visual Prompts?"), as specified in
seeds-methods.md §4.2: score every prompt of every layer with a gradient-based gate score, rank all of them together
(or per layer, or at random for the baseline), physically remove the dropped ones, then fine-tune only the kept
prompts and the head for a short schedule. The result is a normal run directory of the same method whose per-layer
prompt counts differ (`prompt.tokens_per_layer`). On E²VPT runs it condenses the visual prompts (their token and
segment masks are multiplied into them first); the key-value prompts stay."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..console import Reporter
from ..cost import vit_macs
from ..errors import ConfigError
from ..model import build_model
from ..prompts.base import PromptedModel
from ..prompts.e2vpt import E2VPT
from ..runs import RunDir
from .artifacts import write_condense_artifacts
from .scores import Aggregate, gate_scores
from .source import open_source
from .select import Ranking, count_for_budget, keep_masks


@dataclass
class PCOptions:
    keep: float | None = 0.3  # fraction of all prompts to keep
    keep_count: int | None = None  # or an exact count
    max_overhead: float | None = None  # or a MAC budget: extra MACs relative to the bare backbone (0.05 = 5 %)
    ranking: Ranking = "global"
    score: Aggregate = "abs_batch"
    score_batches: int | None = None  # batches of training data used for scoring (None: all)
    finetune_epochs: int | None = None  # None: 30 % of the source run's epochs, at least 1
    lr: float | None = None  # None: a tenth of the source run's lr (a fresh optimizer at full lr undoes training)
    seed: int = 0  # for the random ranking


def condensed_config(cfg: RunConfig, counts: list[int], epochs: int, lr: float | None) -> RunConfig:
    new = copy.deepcopy(cfg)
    new.name = None
    if cfg.method == "e2vpt":  # visual prompts per layer, masks baked in
        new.prompt.tokens_per_layer = list(counts)
        new.prompt.token_keep = None
    elif cfg.prompt.deep:
        new.prompt.tokens_per_layer = list(counts)
        new.prompt.num_tokens = max(counts)
    else:
        new.prompt.num_tokens = counts[0]
    new.train.epochs = epochs
    new.train.warmup_epochs = 0.0
    new.train.lr = lr if lr is not None else 0.1 * cfg.train.lr
    return new


def condensed_state(model: PromptedModel, masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The source's trainable tensors with the dropped prompt rows removed (E²VPT: masks baked in first)."""
    state = model.trainable_state()
    e2vpt = isinstance(model.method, E2VPT)
    for l, keep in enumerate(masks):
        key = f"method.prompts.{l}"
        rows = model.method.masked(model.method.prompts[l]).detach() if e2vpt else state[key]
        state[key] = rows[keep].clone()
    if e2vpt:
        state["method.token_mask"] = state["method.token_mask"][:0].clone()
        state["method.segment_mask"] = state["method.segment_mask"][:0].clone()
    return state


def macs_for(model: PromptedModel, num_classes: int, counts: list[int]) -> int:
    per_block = counts if model.method.deep else counts * model.info.depth
    kv = model.method.config.num_kv if isinstance(model.method, E2VPT) else 0
    return vit_macs(model.info, num_classes, [(n, n + kv) for n in per_block]).total


def condense_pc(src: str | Path, out: str | Path, opts: PCOptions, reporter: Reporter | None = None) -> dict:
    """Condense the VPT run `src` into a new run directory `out`; returns the report (also saved there)."""
    from ..train import fit

    rep = reporter or Reporter()
    source = open_source(src, ("vpt", "e2vpt"), "Prompt Condensation", "or E²VPT token pruning: --method e2vpt")
    cfg, model, num_classes = source.cfg, source.model, source.num_classes
    scores = gate_scores(model, source.scoring_loader(), opts.score, opts.score_batches)
    total = sum(len(s) for s in scores)
    bare_macs = vit_macs(model.info, num_classes).total
    if opts.max_overhead is not None:
        if opts.max_overhead < 0:
            raise ConfigError("--max-overhead must be >= 0: a budget below the bare backbone's cost keeps nothing")
        try:
            k = count_for_budget(scores, lambda c: macs_for(model, num_classes, c),
                                 int(bare_macs * (1 + opts.max_overhead)))
        except ValueError:
            raise ConfigError(f"--max-overhead {opts.max_overhead:.1%} is below what this run costs without any "
                              "visual prompt (its key-value prompts)", "raise the budget") from None
    elif opts.keep_count is not None:
        if not 0 < opts.keep_count <= total:
            raise ConfigError(f"--keep-count must be in 1..{total}, got {opts.keep_count}")
        k = opts.keep_count
    else:
        if opts.keep is None or not 0 < opts.keep <= 1:
            raise ConfigError(f"--keep must be in (0, 1], got {opts.keep}")
        k = round(opts.keep * total)
    masks = keep_masks(scores, k, opts.ranking, opts.seed)
    counts = [int(m.sum()) for m in masks]
    epochs = opts.finetune_epochs if opts.finetune_epochs is not None else max(1, round(0.3 * cfg.train.epochs))
    new_cfg = condensed_config(cfg, counts, epochs, opts.lr)
    state = condensed_state(model, masks)
    rep.log(f"keeping {k}/{total} prompts ({opts.ranking} ranking, score {opts.score}); per layer: {counts}")

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
        "macs": {"bare": bare_macs, "before": macs_for(model, num_classes, model.method.layer_counts()[:len(scores)]),
                 "after": macs_for(model, num_classes, counts)},
        "params": {"prompt_before": model.param_summary()["prompt"], "prompt_after": result.params["prompt"]},
    }
    write_condense_artifacts(RunDir(result.run_dir), report, scores, masks)
    return report
