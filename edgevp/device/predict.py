"""`edgevp predict ARTIFACT IMAGE|DIR ...`: top-k labels with softmax probabilities per image (torch-free).

Unreadable images are skipped with a warning line on stderr and counted in the summary; with `strict` the first one
raises DataError (exit 5)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..tables import markdown_table
from ..runtime.scan import IMAGE_EXTENSIONS, image_files
from .artifact import Artifact


def collect(inputs: list[Path]) -> list[Path]:
    """Image files among INPUTS (a directory: its image files, recursively, sorted, hidden files, `._*` and
    `__MACOSX/` skipped as training skips them; a file named is read as is). A missing input is DataError."""
    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += image_files(p)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"image '{p}' does not exist")
    if not files:
        raise DataError("no images to predict", f"give image files or folders of {', '.join(IMAGE_EXTENSIONS)}")
    return files


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def predict(artifact: Artifact, files: list[Path], top_k: int = 5, batch: int = 32, strict: bool = False,
            warn=print) -> dict:
    """{"predictions": [{"image", "top": [{"rank", "label", "index", "probability"}]}], "images", "skipped"}."""
    preds, skipped = [], []
    for i in range(0, len(files), batch):
        xs, kept = [], []
        for f in files[i:i + batch]:
            try:
                xs.append(artifact.pre.image(f))
                kept.append(f)
            except DataError as e:
                if strict:
                    raise DataError(e.message, "--strict stops at the first unreadable image") from None
                skipped.append({"image": str(f), "error": e.message})
                warn(f"warning: skipped {e.message}")
        if not xs:
            continue
        probs = softmax(artifact.logits(artifact.pre.normalise(np.stack(xs)), batch))
        k = min(top_k, probs.shape[1])
        for f, p in zip(kept, probs):
            order = np.argsort(-p)[:k]
            preds.append({"image": str(f), "top": [
                {"rank": r + 1, "index": int(j), "label": artifact.classes[j] if artifact.classes and
                 j < len(artifact.classes) else str(int(j)), "probability": float(p[j])} for r, j in enumerate(order)]})
    return {"artifact": str(artifact.path), "task": artifact.task, "images": len(preds), "skipped": len(skipped),
            "skipped_images": skipped, "predictions": preds}


def as_json(res: dict) -> str:
    return json.dumps(res, indent=1)


def as_csv(res: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "rank", "label", "index", "probability"])
    for p in res["predictions"]:
        for t in p["top"]:
            w.writerow([p["image"], t["rank"], t["label"], t["index"], f"{t['probability']:.6f}"])
    return buf.getvalue()


def as_table(res: dict) -> str:
    k = max((len(p["top"]) for p in res["predictions"]), default=1)
    head = ["image", *[h for r in range(1, k + 1) for h in (f"top-{r}", "p")]]
    rows = [[Path(p["image"]).name, *[v for t in p["top"] for v in (t["label"], f"{t['probability']:.3f}")]]
            for p in res["predictions"]]
    return markdown_table(head, [r + [""] * (len(head) - len(r)) for r in rows], "l" + "lr" * k)


def summary(res: dict) -> str:
    return f"{res['images']} image(s) predicted, {res['skipped']} skipped (unreadable)"
