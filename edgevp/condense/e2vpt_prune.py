"""E²VPT pruning (Han et al., ICCV 2023): token-wise and segment-wise pruning of the visual prompts from mask
gradients, rewinding, and a budget search selected on the validation split.

1. Score the token mask m (n_p) and segment mask s (n_p, R) of a trained E²VPT run (scores.mask_scores).
2. For each candidate (tokens pruned, segments pruned per kept token): drop the lowest-scored tokens *from the
   model* (they leave the sequence, so FLOPs fall) and zero the lowest-scored segments of every kept token (baked
   into the frozen segment mask), then retrain from the original initial values (`rewind=init`, the paper; the
   run's seed rebuilds them exactly) or a fresh random init (`rewind=random`, the reference code).
3. Keep the candidate with the best validation top-1 (ties: the cheaper one). KV prompts are never pruned.
The reference pipeline's grid is 9 token budgets × 8 segment budgets of full retrains (`grid="full"`); the default
searches a few budgets with short retrains and prints the cost of each. The masks and what pruning keeps come from
the method's hooks (`mask_units`, `keep_masked`), so any method that declares token/segment masks can be pruned.
"""
from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .. import distributed
from ..config import check_options
from ..console import Reporter
from ..cost import vit_macs
from ..errors import ConfigError, IncompatibleError
from ..model import build_model
from ..prompts.base import PromptedModel
from ..runs import RunDir
from .artifacts import write_condense_artifacts
from .pc import _check_schedule, condensed_state, finetune_config
from .scores import Aggregate, mask_scores
from .source import open_source

PCTS = range(10, 100, 10)


@dataclass
class E2VPTPruneOptions:
    """Options of `edgevp condense --method e2vpt`."""

    token_budgets: list[int] = field(default_factory=lambda: [30, 50, 70])  # % of visual tokens to prune, each 1..99
    segment_budgets: list[int] = field(default_factory=lambda: [0, 8])  # segments pruned per kept token
    grid: Literal["search", "full"] = "search"  # full: the reference grid, 9 token budgets x 8 segment budgets
    rewind: Literal["init", "random"] = "init"  # retrain from the original init (paper) or a fresh one (code)
    score: Aggregate = "abs_batch"
    score_batches: int | None = None
    finetune_epochs: int | None = None
    lr: float | None = None
    seed: int = 0

    def __post_init__(self):
        check_options(self)
        if not self.token_budgets or any(not 0 < p < 100 for p in self.token_budgets):
            raise ConfigError(f"token budgets are percentages in 1..99, got {self.token_budgets}")
        if not self.segment_budgets or any(s < 0 for s in self.segment_budgets):
            raise ConfigError(f"segment budgets are counts >= 0, got {self.segment_budgets}")
        _check_schedule(self)


def token_prune_counts(n_p: int, pcts=PCTS) -> list[int]:
    """Tokens to prune for each percentage: floor(n_p·pct/100), keeping at least one token."""
    return sorted({min(math.floor(n_p * p / 100), n_p - 1) for p in pcts} - {0})


def segment_prune_counts(r: int, pcts=PCTS) -> list[int]:
    """Segments to prune per token for each percentage, keeping at least 4 of r."""
    return sorted({min(math.floor(r * p / 100), r - 4) for p in pcts} - {0})


def prune_plan(tok_scores: torch.Tensor, seg_scores: torch.Tensor, n_tok: int, n_seg: int):
    """(kept token mask (n_p,), segment keep mask (n_kept, R)): the lowest scores go first, ties by index."""
    keep = torch.ones(len(tok_scores), dtype=torch.bool)
    keep[torch.argsort(tok_scores, stable=True)[:n_tok]] = False
    seg_keep = torch.ones(int(keep.sum()), seg_scores.shape[1], dtype=torch.bool)
    for row, k in enumerate(torch.nonzero(keep).flatten().tolist()):
        seg_keep[row, torch.argsort(seg_scores[k], stable=True)[:n_seg]] = False
    return keep, seg_keep


def pruned(model: PromptedModel, keep: torch.Tensor, seg_keep: torch.Tensor, epochs: int, lr: float | None,
           cfg) -> tuple:
    """(config, trainable state) of `model` with the pruned tokens removed and the pruned segments zeroed."""
    prompt_cfg, method_state = model.method.keep_masked(keep, seg_keep)
    new_cfg = finetune_config(cfg, prompt_cfg, epochs, lr, min(cfg.train.warmup_epochs, 0.1 * epochs))
    return new_cfg, condensed_state(model, method_state)


def _check_new(out: Path) -> None:
    if out.exists():
        raise IncompatibleError(f"output '{out}' already exists", "choose another --out")


def _macs(model: PromptedModel, num_classes: int, n_tokens: int) -> int:
    units = model.method.prompt_units()
    return vit_macs(model.info, num_classes, model.method.extra_tokens([n_tokens] * len(units))).total


def condense_e2vpt(src: str | Path, out: str | Path, opts: E2VPTPruneOptions, reporter: Reporter | None = None) -> dict:
    from ..train import fit

    distributed.init_from_env()  # under torchrun: scores summed over ranks, rank 0 writes the pruned run
    rep = (reporter or Reporter()) if distributed.is_main() else Reporter(quiet=True)
    out = Path(out)
    distributed.on_main(lambda: _check_new(out))
    source = open_source(src, "E²VPT pruning", "VPT runs: --method pc", has_masks=True)
    cfg, model, num_classes = source.cfg, source.model, source.num_classes
    token_mask, segment_mask = model.method.mask_units()
    n_p, r = token_mask.shape[0], segment_mask.shape[1]
    tok_list = token_prune_counts(n_p) if opts.grid == "full" else token_prune_counts(n_p, opts.token_budgets)
    seg_list = (segment_prune_counts(r) if opts.grid == "full"
                else sorted({min(s, r - 4) for s in opts.segment_budgets}))
    if not tok_list or any(s < 0 for s in seg_list):
        raise ConfigError(f"no valid budgets: token % must prune at least one of {n_p} tokens and keep one, "
                          "segment counts must be >= 0")
    tok_scores, seg_scores = mask_scores(model, source.scoring_loader(), opts.score, opts.score_batches)
    before = source.top1(model)
    # the rewind source: the run's own initial values (same seed) or a fresh random init
    init_cfg = copy.deepcopy(cfg)
    if opts.rewind == "random":
        init_cfg.train.seed = cfg.train.seed + 1000 + opts.seed
    init_model = build_model(init_cfg, num_classes)
    epochs = opts.finetune_epochs if opts.finetune_epochs is not None else max(1, round(0.3 * cfg.train.epochs))
    cands = out.parent / f".{out.name}.candidates"
    results = []
    for n_tok in tok_list:
        for n_seg in seg_list:
            keep, seg_keep = prune_plan(tok_scores, seg_scores, n_tok, n_seg)
            new_cfg, init_state = pruned(init_model, keep, seg_keep, epochs, opts.lr, cfg)
            t0 = time.time()
            res = fit(new_cfg, out=cands / f"t{n_tok}-s{n_seg}", reporter=rep, init_state=init_state,
                      command=["edgevp", "condense", str(src), "--method", "e2vpt"],
                      extra_inputs={"condensed_from": {"run": str(Path(src).resolve())}})
            macs = _macs(model, num_classes, int(keep.sum()))
            results.append({"tokens_pruned": n_tok, "segments_pruned": n_seg, "val_top1": res.best_val_top1,
                            "test_top1": res.test_top1, "macs": macs, "seconds": round(time.time() - t0, 1),
                            "run": res.run_dir, "keep": keep, "seg_keep": seg_keep})
            rep.log(f"candidate tokens -{n_tok} segments -{n_seg}: val top-1 {res.best_val_top1:.2f}, "
                    f"{macs / 1e9:.3f} GMACs, cost {results[-1]['seconds']}s")
    best = max(results, key=lambda c: (c["val_top1"], -c["macs"], c["tokens_pruned"], c["segments_pruned"]))
    removal_cfg, removal_state = pruned(model, best["keep"], best["seg_keep"], 0, None, cfg)
    removal = build_model(removal_cfg, num_classes)
    removal.load_trainable_state(removal_state)
    after_removal = source.top1(removal)
    if distributed.is_main():
        shutil.copytree(best["run"], out)
        RunDir(out).update_manifest(run_id=out.name)
    kept = int(best["keep"].sum())
    report = {
        "method": "e2vpt", "source_run": str(Path(src).resolve()), "rewind": opts.rewind,
        "score": f"|dL/dmask| aggregated {opts.score}" if opts.score != "signed_mean" else "signed mean dL/dmask",
        "kept": kept, "total": n_p, "keep_ratio": kept / n_p, "tokens_pruned": best["tokens_pruned"],
        "segments_pruned_per_token": best["segments_pruned"], "segments": r, "finetune_epochs": epochs,
        "candidates": [{k: (f"candidates/{Path(v).name}" if k == "run" else v) for k, v in c.items()
                        if k not in ("keep", "seg_keep")} for c in results],
        "top1_before": before, "top1_after_removal": after_removal,
        "top1_after_finetune": {"val": best["val_top1"], "test": best["test_top1"]},
        "macs": {"bare": vit_macs(model.info, num_classes).total, "before": _macs(model, num_classes, n_p), "after": best["macs"]},
        "params": {"prompt_before": model.param_summary()["prompt"],
                   "prompt_after": removal.param_summary()["prompt"]},
    }
    if distributed.is_main():
        seg_rows = [seg_scores[k] for k in torch.nonzero(best["keep"]).flatten().tolist()]
        write_condense_artifacts(RunDir(out), report, [tok_scores, *seg_rows], [best["keep"], *best["seg_keep"]],
                                 title=f"row 0: tokens ({kept}/{n_p} kept); rows 1+: segments of kept tokens")
        shutil.move(str(cands), str(out / "candidates"))  # every retrained candidate stays inspectable
    return report
