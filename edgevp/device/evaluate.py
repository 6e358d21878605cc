"""`edgevp eval ARTIFACT`: accuracy of the deployed artifact itself, on the device, without the training stack.

Data: the export's bundled test split (`test.npz`, found beside the artifact when `--data` is not given: images
already resized as the artifact takes them) or an image folder `ROOT/<class>/<image>` (preprocessed in numpy/Pillow
from the artifact's metadata). Class names are matched by name: every class of the dataset must be a class of the
artifact (`class_names` metadata, a pack's tasks.json), else exit 5.

Writes into `--out` (default `<artifact's folder>/eval/<artifact file name>/`): `eval.json` (top-1/top-5, per-class
accuracy, the comparison with the run's PyTorch test top-1 when the run is found), `eval.csv` (per class),
`confusion.csv` (rows: true class, columns: predicted) and `confusion.png` when matplotlib is installed.
"""
from __future__ import annotations

import csv
import io
import json
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, IncompatibleError
from ..records import train_info_of
from ..runtime.scan import scan_folder
from .artifact import Artifact
from .preprocess import Preprocess

TEST_FILE = "test.npz"


@dataclass
class EvalData:
    """Images (uint8 N×3×H×W already resized, or file paths), labels as indices into `classes`."""

    source: str
    kind: str  # test.npz | folder
    classes: list[str]
    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[Path] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def find_test_split(artifact: Path) -> Path | None:
    """The bundled test split near ARTIFACT: in its folder (a bundle, an export dir) or the folder above."""
    base = artifact if artifact.is_dir() else artifact.parent
    for d in (base, base.parent):
        if (d / TEST_FILE).is_file():
            return d / TEST_FILE
    return None


def load_data(data: Path, limit: int | None = None) -> EvalData:
    """A test.npz or an image folder. Raises DataError (exit 5): missing, empty, unreadable."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"dataset '{data}' does not exist", "give an image folder ROOT/<class>/<image> or a test.npz")
    if data.is_file():
        try:
            with np.load(data, allow_pickle=False) as z:
                images, labels, classes = z["images"], z["labels"], [str(c) for c in z["class_names"]]
                info = json.loads(str(z["info"])) if "info" in z.files else {}
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:  # a cut-off copy or download of the export's file
            raise IncompatibleError(f"'{data}' is corrupt or truncated ({type(e).__name__})",
                                    "copy it again, or export the run again") from None
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"'{data}' is not a readable test split (images, labels, class_names): "
                            f"{type(e).__name__}") from None
        if images.ndim != 4 or images.shape[1] != 3 or len(images) != len(labels) or len(labels) == 0:
            raise DataError(f"'{data}' holds no N×3×H×W images with labels")
        if limit:
            images, labels = images[:limit], labels[:limit]
        return EvalData(str(data), "test.npz", classes, labels.astype(np.int64), images=images, info=info)
    paths, labels, classes = scan_folder(data)  # training's scan: the same images, the same classes
    paths = [Path(p) for p in paths]
    if limit:
        paths, labels = paths[:limit], labels[:limit]
    return EvalData(str(data), "folder", classes, np.asarray(labels, np.int64), paths=paths)


def match_classes(data_classes: list[str], model_classes: list[str] | None, artifact: Path) -> np.ndarray:
    """Index of each dataset class among the model's outputs. Raises DataError (exit 5) on a mismatch."""
    if model_classes is None:  # a foreign model without --labels: the output index is the dataset's class index
        return np.arange(len(data_classes))
    pos = {c: i for i, c in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in pos]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataError(f"the dataset's classes do not match the artifact's: {shown} not among its "
                        f"{len(model_classes)} classes ({', '.join(model_classes[:5])}"
                        f"{', ...' if len(model_classes) > 5 else ''})", f"check {artifact.name}'s class_names")
    return np.asarray([pos[c] for c in data_classes], np.int64)


def _batches(data: EvalData, pre: Preprocess, batch: int, strict: bool, warn):
    """Yield (x normalised float32, labels, kept paths) batch by batch; unreadable images are skipped (warn) or
    raise DataError with `strict`."""
    if data.images is not None:
        h, w = data.images.shape[2:]
        if (h, w) != tuple(pre.size):
            raise DataError(f"'{data.source}' holds {h}x{w} images, the artifact takes {pre.size[0]}x{pre.size[1]}",
                            "use the test.npz exported with this artifact, or an image folder")
        for i in range(0, len(data.labels), batch):
            x = data.images[i:i + batch].astype(np.float32) / 255.0
            yield pre.normalise(x), data.labels[i:i + batch], None
        return
    for i in range(0, len(data.paths), batch):
        xs, ys = [], []
        for p, y in zip(data.paths[i:i + batch], data.labels[i:i + batch]):
            try:
                xs.append(pre.image(p))
                ys.append(y)
            except DataError as e:
                if strict:
                    raise
                warn(e.message)
        if xs:
            yield pre.normalise(np.stack(xs)), np.asarray(ys, np.int64), None


def find_run(artifact: Path) -> Path | None:
    """The run an artifact was exported from: ARTIFACT's parent `export/` (or a bundle inside it) -> the run dir."""
    for d in list(artifact.resolve().parents)[:3]:
        if d.name == "export" and (d.parent / "manifest.json").is_file():
            return d.parent
    return None


def run_reference(artifact: Artifact, data: EvalData) -> dict | None:
    """The run's PyTorch test top-1 (its manifest) and, with the bundled test split, PyTorch's top-1 on exactly
    these images (`torch_top1` in test.npz); whether the run's checkpoint is still the one exported."""
    ref = {}
    if data.kind == "test.npz" and "torch_top1" in data.info:
        ref["torch_top1_same_images"] = data.info["torch_top1"]
        ref["same_images"] = len(data.labels) == data.info.get("images")
    run = find_run(artifact.path)
    if run is not None:
        try:
            manifest = json.loads((run / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        try:
            info = train_info_of(manifest)
        except IncompatibleError:  # a record this edgevp cannot read: the reference is only what it can say
            info = None
        ref.update(run=str(run), run_name=run.name, test_top1=info and info.test_top1)
        want = artifact.meta.get("source_checkpoint_sha256")
        if want:
            from ..io import sha256_file

            ckpts = [run / "checkpoints" / f"{w}.safetensors" for w in ("best", "last")]
            ref["checkpoint_matches"] = any(c.is_file() and sha256_file(c) == want for c in ckpts)
        if artifact.meta.get("source_run") and artifact.meta["source_run"] != run.name:
            ref["note"] = f"exported from run '{artifact.meta['source_run']}'"
    return ref or None


def evaluate(artifact: Artifact, data: EvalData, batch: int = 32, strict: bool = False, warn=None) -> dict:
    """Top-1/top-5, per-class accuracy and the confusion matrix of `artifact` on `data`."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    skipped: list[str] = []

    def _warn(msg):
        skipped.append(msg)
        warn(f"warning: skipped {msg}")

    idx = match_classes(data.classes, artifact.classes, artifact.path)
    names = artifact.classes or data.classes
    k = len(names)
    confusion = np.zeros((k, k), np.int64)
    top5_hits = 0
    n = 0
    t0 = time.perf_counter()
    for x, y, _ in _batches(data, artifact.pre, batch, strict, _warn):
        logits = artifact.logits(x, batch)
        if logits.shape[1] < k:
            raise IncompatibleError(f"the artifact outputs {logits.shape[1]} scores but names {k} classes")
        logits = logits[:, :k]
        truth = idx[y]
        pred = logits.argmax(1)
        np.add.at(confusion, (truth, pred), 1)
        top = np.argsort(-logits, axis=1)[:, :min(5, k)]
        top5_hits += int((top == truth[:, None]).any(1).sum())
        n += len(y)
    seconds = time.perf_counter() - t0
    if n == 0:
        raise DataError(f"no image of '{data.source}' could be read", "see the warnings above")
    per_class = []
    for c in range(k):
        total = int(confusion[c].sum())
        if total or c in set(idx.tolist()):
            per_class.append({"class": names[c], "index": c, "images": total, "correct": int(confusion[c, c]),
                              "top1": float(confusion[c, c] / total * 100) if total else None})
    top1 = float(np.trace(confusion) / n * 100)
    return {"images": n, "skipped": len(skipped), "skipped_images": skipped[:50], "top1": top1,
            "top5": float(top5_hits / n * 100), "top5_k": min(5, k), "classes": names, "per_class": per_class,
            "confusion": confusion.tolist(), "seconds": seconds, "images_per_second": n / seconds if seconds else None}


def default_out(artifact_arg: Path, model: Path) -> Path:
    base = artifact_arg if Path(artifact_arg).is_dir() else model.parent
    return base / "eval" / model.name


def write_eval(out: Path, artifact: Artifact, data: EvalData, result: dict, reference: dict | None) -> dict:
    """eval.json, eval.csv (per class), confusion.csv, confusion.png (with matplotlib). Returns the eval.json dict."""
    from .. import __version__
    from ..io import sha256_file, write_text
    from ..optional import pyplot
    from ..records import EvalRecord
    from ..runs import now

    out.mkdir(parents=True, exist_ok=True)
    names = result["classes"]
    comparison = None
    if reference:
        comparison = dict(reference)
        for key in ("test_top1", "torch_top1_same_images"):
            if reference.get(key) is not None:
                comparison[f"delta_vs_{key}"] = result["top1"] - reference[key]
    doc = {"kind": "edgevp-eval", "edgevp_version": __version__, "created_at": now(),
           "artifact": {**artifact.describe(), "name": artifact.path.name, "sha256": sha256_file(artifact.path),
                        **artifact.meta},
           "data": {"source": data.source, "kind": data.kind, "classes": len(data.classes), **(
               {"test_split": data.info} if data.info else {})},
           **{k: v for k, v in result.items() if k not in ("confusion", "classes")},
           "comparison": comparison, "files": ["eval.json", "eval.csv", "confusion.csv"]}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["class", "index", "images", "correct", "top1"])
    for r in result["per_class"]:
        w.writerow([r["class"], r["index"], r["images"], r["correct"], "" if r["top1"] is None else f"{r['top1']:.4f}"])
    write_text(out / "eval.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true \\ predicted", *names])
    for name, row in zip(names, result["confusion"]):
        w.writerow([name, *row])
    write_text(out / "confusion.csv", buf.getvalue())
    plt = pyplot()
    if plt is not None:
        cm = np.asarray(result["confusion"], np.float64)
        fig, ax = plt.subplots(figsize=(min(2 + 0.45 * len(names), 14),) * 2)
        ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        if len(names) <= 40:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            for (i, j), v in np.ndenumerate(cm):
                if v:
                    ax.text(j, i, int(v), ha="center", va="center", fontsize=6)
        ax.set(xlabel="predicted", ylabel="true", title=f"{artifact.path.name}: top-1 {result['top1']:.2f}%")
        fig.tight_layout()
        fig.savefig(out / "confusion.png", dpi=100)
        plt.close(fig)
        doc["files"].append("confusion.png")
    record = EvalRecord.from_json(doc, "eval.json")
    record.write(out / "eval.json")
    return record.to_json()


def summary_line(doc: dict, out: Path) -> str:
    a = doc["artifact"]
    line = (f"{a['name']} ({a['kind']}, {a['precision']}{'' if a['task'] is None else ', task ' + str(a['task'])}) on "
            f"{doc['images']} images of {doc['data']['kind']}: top-1 {doc['top1']:.2f}, top-{doc['top5_k']} "
            f"{doc['top5']:.2f}")
    c = doc.get("comparison") or {}
    if c.get("torch_top1_same_images") is not None:
        line += f"; PyTorch on the same images {c['torch_top1_same_images']:.2f}"
    if c.get("test_top1") is not None:
        line += f"; run's test top-1 {c['test_top1']:.2f} ({doc['top1'] - c['test_top1']:+.2f})"
    if doc["skipped"]:
        line += f"; {doc['skipped']} unreadable image(s) skipped"
    return line + f" -> {out / 'eval.json'}"
