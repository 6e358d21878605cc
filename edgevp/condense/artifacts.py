"""What condensation leaves in the condensed run directory: keep mask, scores, report, heatmap and score plots."""
from __future__ import annotations

import torch

from ..io import atomic_path, write_json, write_text
from ..optional import pyplot
from ..runs import RunDir


def write_condense_artifacts(run: RunDir, report: dict, scores: list[torch.Tensor], masks: list[torch.Tensor],
                             title: str | None = None) -> None:
    from safetensors.torch import save_file

    d = run.path / "condense"
    d.mkdir(exist_ok=True)
    write_json(d / "keep_mask.json", {"layers": [m.int().tolist() for m in masks],
                                      "kept_per_layer": [int(m.sum()) for m in masks],
                                      "kept": int(sum(int(m.sum()) for m in masks)),
                                      "total": int(sum(len(m) for m in masks))})
    with atomic_path(d / "scores.safetensors") as tmp:
        save_file({f"layer_{l}": s.float().contiguous() for l, s in enumerate(scores)}, str(tmp))
    width = max(len(m) for m in masks)
    rows = ["layer," + ",".join(f"p{i}" for i in range(width)) + ",kept,scores"]
    for l, (m, s) in enumerate(zip(masks, scores)):
        cells = [str(int(v)) for v in m.tolist()] + [""] * (width - len(m))
        rows.append(f"{l}," + ",".join(cells) + f",{int(m.sum())}," + " ".join(f"{v:.6g}" for v in s.tolist()))
    write_text(d / "keep_heatmap.csv", "\n".join(rows) + "\n")
    write_text(d / "scores.csv", "layer,index,score,kept\n" + "".join(
        f"{l},{i},{float(v):.8g},{int(k)}\n" for l, (s, m) in enumerate(zip(scores, masks))
        for i, (v, k) in enumerate(zip(s.tolist(), m.tolist()))))
    report["plots"] = _plots(d, scores, masks, title or f"kept {report['kept']}/{report['total']}")
    write_json(d / "report.json", report)
    run.update_manifest(condense=report)
    run.set_stage("condense", status="completed", method=report["method"], source_run=report["source_run"])


def _plots(d, scores: list[torch.Tensor], masks: list[torch.Tensor], title: str) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []  # CSVs carry the same data; plots need the `plot` extra
    width = max(len(m) for m in masks)
    grid = torch.full((len(masks), width), float("nan"))
    for l, (s, m) in enumerate(zip(scores, masks)):
        grid[l, : len(s)] = s
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.35 * len(masks) + 2.5))
    im = ax1.imshow(grid.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    for l, m in enumerate(masks):
        for i, k in enumerate(m.tolist()):
            if k:
                ax1.plot(i, l, marker="s", mfc="none", mec="white", ms=6)
        ax1.text(width - 0.4, l, f" {int(m.sum())}", va="center", fontsize=8)
    ax1.set(xlabel="prompt index", ylabel="block", title=f"importance (kept outlined) — {title}")
    fig.colorbar(im, ax=ax1, fraction=0.04)
    flat = torch.cat(scores)
    kept = torch.cat(masks)
    ax2.hist([flat[kept].numpy(), flat[~kept].numpy()], bins=30, stacked=True, label=["kept", "dropped"])
    ax2.set(xlabel="score", ylabel="prompts", title="score distribution")
    ax2.legend()
    fig.tight_layout()
    out = d / "keep_heatmap.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return [str(out.relative_to(d.parent))]
