"""edgevp's vectorised entropy threshold equals ONNX Runtime's `get_entropy_threshold` (the O(bins²) Python loop it
replaces) on real activation histograms, and an entropy calibration through edgevp equals ONNX Runtime's own."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


def _activation_histograms(tmp_path, n: int = 3):
    """ONNX Runtime's 2048-bin histograms of `n` MatMul inputs of a tiny ViT over real digit images, and the
    calibrator that collected them."""
    from pathlib import Path

    from sklearn.datasets import load_digits
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from edgevp.export.onnx import export_onnx
    from edgevp.export.ort import CALIBRATION
    from tests.conftest import tiny_model

    model = tiny_model("vpt", {"num_tokens": 2}).eval()
    export_onnx(model, tmp_path / "m.onnx", (3, 32, 32), dynamic_batch=False)
    digits = np.kron(load_digits().images[:6, None].astype(np.float32) / 16.0, np.ones((1, 1, 4, 4), np.float32))
    images = np.repeat(digits, 3, axis=1)
    calibrator = create_calibrator(Path(tmp_path / "m.onnx"), ["MatMul"],
                                   augmented_model_path=str(tmp_path / "aug.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy, extra_options=CALIBRATION["entropy"][1])

    class Reader:
        batches = iter([{"input": images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.batches, None)

    calibrator.collect_data(Reader())
    names = sorted(calibrator.collector.histogram_dict)
    return calibrator, names[:: max(1, len(names) // n)][:n]


def test_vectorised_threshold_equals_onnxruntimes_on_real_histograms(tmp_path):
    from edgevp.export.entropy import entropy_threshold

    calibrator, names = _activation_histograms(tmp_path)
    collector = calibrator.collector
    for name in names:
        hist = collector.histogram_dict[name]
        theirs = collector.get_entropy_threshold(hist, collector.num_quantized_bins)
        ours = entropy_threshold(hist, collector.num_quantized_bins)
        assert (ours[0], ours[1]) == (theirs[0], theirs[1]) and ours[0].dtype == theirs[0].dtype
        # a real choice: a threshold inside the observed range, not just the full range
        assert ours[1] - ours[0] <= hist[3] - hist[2]


@pytest.mark.parametrize("shape", ["symmetric", "one-sided", "outliers", "sparse"])
def test_vectorised_threshold_equals_onnxruntimes_on_edge_shapes(shape):
    """Shapes that exercise the integer spreading: empty bins inside the range, a one-sided (ReLU) tensor, far
    outliers that the best threshold clips."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from edgevp.export.entropy import entropy_threshold

    rng = np.random.default_rng(1)
    x = {"symmetric": rng.standard_normal(5000),
         "one-sided": np.maximum(rng.standard_normal(5000), 0),
         "outliers": np.concatenate([rng.standard_normal(5000), [60.0, -45.0]]),
         "sparse": rng.integers(-6, 7, 300) * 1.5}[shape].astype(np.float32)
    collector = HistogramCollector("entropy", False, 2048, 128, 99.99, "same")
    collector.collect_value({"t": [x]})
    hist = collector.histogram_dict["t"]
    theirs = collector.get_entropy_threshold(hist, 128)
    ours = entropy_threshold(hist, 128)
    assert (ours[0], ours[1]) == (theirs[0], theirs[1])
    if shape == "outliers":
        assert ours[1] < 60.0 and ours[0] > -45.0  # the outliers are clipped, as entropy calibration should


def test_edgevp_entropy_ranges_equal_onnxruntimes_compute_data(tmp_path):
    """The whole result `calibrate` saves (thresholds and histograms per tensor) equals what ONNX Runtime's own
    `compute_data` returns, on the tensors compared (ONNX Runtime's loop is too slow to run on all of them)."""
    from edgevp.export.ort import entropy_ranges

    calibrator, names = _activation_histograms(tmp_path, n=2)
    calibrator.collector.histogram_dict = {k: calibrator.collector.histogram_dict[k] for k in names}
    ours, theirs = entropy_ranges(calibrator).data, calibrator.compute_data().data
    assert ours.keys() == theirs.keys() == set(names)
    for name in names:
        assert np.array_equal(ours[name].range_value, theirs[name].range_value)
        assert np.array_equal(ours[name].hist, theirs[name].hist)
        assert np.array_equal(ours[name].bins, theirs[name].bins)
