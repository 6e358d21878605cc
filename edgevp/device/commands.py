"""What `edgevp eval` and `edgevp predict` do, behind the CLI (torch-free)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, DataError
from ..io import output_dir, staged_dir
from .artifact import open_artifact
from .preprocess import parse_floats, parse_size


def _open(artifact: Path, task: int | None, size: str | None, mean: str | None, std: str | None,
          labels: Path | None):
    return open_artifact(artifact, task=task, size=parse_size(size), mean=parse_floats(mean, 3, "--mean"),
                         std=parse_floats(std, 3, "--std"), labels=labels)


def run_eval(artifact: Path, data: Path | None = None, task: int | None = None, out: Path | None = None,
             batch: int = 32, limit: int | None = None, strict: bool = False, size: str | None = None,
             mean: str | None = None, std: str | None = None, labels: Path | None = None,
             warn=print) -> tuple[dict, Path]:
    """Evaluate ARTIFACT on `data` (default: the test.npz exported beside it); returns (eval.json dict, out dir)."""
    from .evaluate import default_out, evaluate, find_test_split, load_data, run_reference, write_eval

    if batch < 1 or (limit is not None and limit < 1):
        raise ConfigError("--batch and --limit must be >= 1")
    art = _open(artifact, task, size, mean, std, labels)
    try:
        if data is None:
            data = find_test_split(Path(artifact))
            if data is None:
                raise DataError(f"no --data given and no test.npz beside '{artifact}'",
                                "give --data ROOT (ROOT/<class>/<image>) or the export's test.npz")
        out = output_dir(out if out is not None else default_out(Path(artifact), art.path))  # exit 2 before work
        ds = load_data(data, limit)
        result = evaluate(art, ds, batch, strict, warn)
        ref = run_reference(art, ds)
        with staged_dir(out) as stage:  # a failed write (a full disk) leaves none of the files in `out`
            doc = write_eval(stage, art, ds, result, ref)
        return doc, out
    finally:
        art.close()


def run_predict(artifact: Path, images: list[Path], task: int | None = None, top_k: int = 5, batch: int = 32,
                strict: bool = False, size: str | None = None, mean: str | None = None, std: str | None = None,
                labels: Path | None = None, warn=print) -> dict:
    from .predict import collect, predict

    if batch < 1 or top_k < 1:
        raise ConfigError("--batch and --top-k must be >= 1")
    art = _open(artifact, task, size, mean, std, labels)
    try:
        return predict(art, collect(images), top_k, batch, strict, warn)
    finally:
        art.close()
