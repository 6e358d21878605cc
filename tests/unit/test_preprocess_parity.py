"""Training and the device preprocess through one torch-free runtime (edgevp.runtime): the same files give the same
tensor, bit for bit, and the device's folder scan finds exactly the training scan's images and classes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgevp.config import DataConfig
from edgevp.data import backbone_transform, load_splits, make_loader
from edgevp.device import evaluate as device_eval
from edgevp.device import predict as device_predict
from edgevp.device.preprocess import Preprocess
from edgevp.errors import ConfigError
from edgevp.runtime.decode import read_image


def _real_pixels() -> dict[str, np.ndarray]:
    """Real photographs (skimage.data), downscaled with Pillow so the test stays small."""
    from skimage import data

    def small(arr, size):
        return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BILINEAR))

    return {"grey": small(data.camera(), (56, 56)), "rgb": small(data.astronaut(), (64, 64)),
            "alpha": small(data.camera(), (64, 64)),
            "wide": small(data.coffee(), (60, 40))}  # 40 high, 60 wide


def _write_fixtures(folder: Path) -> dict[str, Path]:
    """One file per decoder case, each checked to be in the Pillow mode it stands for."""
    px = _real_pixels()
    folder.mkdir(parents=True)
    files = {}

    def save(name, im, mode, **kw):
        files[name] = folder / name
        im.save(files[name], **kw)
        with Image.open(files[name]) as back:
            assert back.mode == mode, (name, back.mode)

    save("grey8.png", Image.fromarray(px["grey"]), "L")
    wide16 = px["grey"].astype(np.uint16) * 257 + np.arange(56, dtype=np.uint16)[None, :]  # uses all 16 bits
    save("grey16.png", Image.fromarray(wide16), "I;16")
    pal = Image.fromarray(px["rgb"]).quantize(64)
    save("palette.png", pal, "P", transparency=int(np.asarray(pal)[0, 0]))
    save("cmyk.jpg", Image.fromarray(px["rgb"]).convert("CMYK"), "CMYK", quality=95)
    save("rgba.png", Image.fromarray(np.dstack([px["rgb"], px["alpha"]])), "RGBA")
    save("wide.png", Image.fromarray(px["wide"]), "RGB")
    return files


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """ROOT/<class>/<image>: the six decoder cases in two classes."""
    root = tmp_path_factory.mktemp("parity") / "data"
    files = _write_fixtures(root / "cases")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i, f in enumerate(sorted(files.values())):
        f.rename(root / "ab"[i % 2] / f.name)
    (root / "cases").rmdir()
    return root


class _Recorder:
    """An artifact that records the array `edgevp eval` / `predict` feed it (and scores class 0)."""

    def __init__(self, pre: Preprocess, classes: list[str]):
        self.pre, self.classes, self.path, self.task, self.fed = pre, classes, Path("model.onnx"), None, []

    def logits(self, x: np.ndarray, batch: int) -> np.ndarray:
        self.fed.append(x.copy())
        return np.zeros((len(x), len(self.classes)), np.float32)


CASES = [((32, 32), "direct", "bicubic", 1.0), ((32, 32), "timm", "bilinear", 0.875),
         ((32, 32), "direct", "nearest", 1.0), ((32, 48), "timm", "bicubic", 0.9), ((40, 24), "direct", "bilinear", 1.0)]


@pytest.mark.parametrize("size,resize,interpolation,crop_pct", CASES)
def test_the_device_feeds_the_model_exactly_what_training_loads(dataset, size, resize, interpolation, crop_pct):
    info = SimpleNamespace(input_size=(3, *size), interpolation=interpolation, crop_pct=crop_pct)
    cfg = DataConfig(name="folder", root=str(dataset), val_fraction=0.5, test_fraction=0.0, resize=resize)
    splits = load_splits(cfg)
    splits.set_transform(backbone_transform(cfg, info), cfg.split_seed)
    trained = {}
    for ds in (splits.train, splits.val):
        ds.train = False  # the loader as evaluation reads it (augment is "none" anyway)
        (x, _), = list(make_loader(ds, batch_size=len(ds)))
        trained.update(zip(ds.items, x.numpy()))
    assert len(trained) == 6 and all(v.shape == (3, *size) and v.dtype == np.float32 for v in trained.values())

    pre = Preprocess.from_data_config({"input_size": [3, *size], "mean": [0.5] * 3, "std": [0.25] * 3,
                                       "resize": resize, "interpolation": interpolation, "crop_pct": crop_pct})
    data = device_eval.load_data(dataset)
    art = _Recorder(pre, data.classes)
    device_eval.evaluate(art, data, batch=4, strict=True)
    assert [str(p) for p in data.paths] == sorted(trained, key=lambda p: (Path(p).parent.name, Path(p).name))
    for path, fed in zip(data.paths, np.concatenate(art.fed)):
        assert np.array_equal(fed, trained[str(path)]), path.name
    # predict feeds the same arrays; normalised when the model does not normalise
    pre.include_preprocess = False
    art.fed = []
    files = device_predict.collect([dataset])
    device_predict.predict(art, files, top_k=1, batch=4, strict=True)
    for path, fed in zip(files, np.concatenate(art.fed)):
        want = ((trained[str(path)] - np.float32(0.5)) / np.float32(0.25)).astype(np.float32)
        assert np.array_equal(fed, want), path.name


def test_16_bit_is_scaled_and_every_mode_decodes_to_8_bit_rgb_or_grey(tmp_path):
    ramp = np.array([[0, 1000, 32768, 65535]], np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert read_image(tmp_path / "ramp16.png").tolist() == [[0, 4, 128, 255]]  # x / 257, rounded (never clipped)
    files = _write_fixtures(tmp_path / "cases")
    px = _real_pixels()
    assert np.array_equal(read_image(files["grey8.png"]), px["grey"])
    assert np.array_equal(read_image(files["grey16.png"]), px["grey"])  # (x·257 + j) / 257 rounds back to x
    assert np.array_equal(read_image(files["rgba.png"]), px["rgb"])  # alpha dropped, the colour under it kept
    with Image.open(files["palette.png"]) as im:
        assert np.array_equal(read_image(files["palette.png"]), np.asarray(im.convert("RGB")))
    assert read_image(files["cmyk.jpg"]).shape == (64, 64, 3)
    assert read_image(files["wide.png"]).shape == (40, 60, 3)


def test_the_device_scan_finds_exactly_the_training_scan(dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    good = (root / "a" / "grey8.png").read_bytes()  # decodable bytes: only the name says "not an image"
    (root / "a" / "._grey8.png").write_bytes(good)
    (root / "b" / ".hidden.png").write_bytes(good)
    (root / "b" / "deeper" / "__MACOSX").mkdir(parents=True)
    (root / "b" / "deeper" / "__MACOSX" / "x.png").write_bytes(good)
    (root / "b" / "deeper" / "kept.png").write_bytes(good)
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._grey8.png").write_bytes(good)
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(good)
    (root / "a" / ".thumbnails").mkdir()
    (root / "a" / ".thumbnails" / "x.png").write_bytes(good)
    (root / "only_junk").mkdir()  # a folder with no image but an AppleDouble file is no class
    (root / "only_junk" / "._y.png").write_bytes(good)
    (root / "a" / "notes.txt").write_text("not an image")

    splits = load_splits(DataConfig(name="folder", root=str(root), val_fraction=0.5, test_fraction=0.0))
    data = device_eval.load_data(root)
    assert splits.classes == data.classes == ["a", "b"]
    assert sorted(splits.files) == sorted(map(str, data.paths)) and len(data.paths) == 7
    by_path = {p: splits.classes[y] for ds in (splits.train, splits.val) for p, y in zip(ds.items, ds.labels)}
    assert {str(p): data.classes[y] for p, y in zip(data.paths, data.labels)} == by_path
    assert sorted(map(str, device_predict.collect([root]))) == sorted(splits.files)


def test_a_non_square_backbone_input_is_refused_before_any_image_is_read(monkeypatch, tmp_path):
    import timm.data

    from edgevp.runtime import decode
    from edgevp.train import fit

    from ..conftest import tiny_config

    real = timm.data.resolve_model_data_config
    monkeypatch.setattr(timm.data, "resolve_model_data_config",
                        lambda model: {**real(model), "input_size": (3, 32, 48)})
    before = decode.decoded_count()
    with pytest.raises(ConfigError, match="takes 32x48 images; edgevp trains square inputs only") as e:
        fit(tiny_config("linear", img_size=None), out=tmp_path / "run")
    assert e.value.exit_code == 2 and decode.decoded_count() == before and not (tmp_path / "run").exists()


def test_the_runtime_imports_no_torch(no_torch_env, dataset):
    code = ("import sys, edgevp.runtime.decode as d, edgevp.runtime.scan as s, edgevp.runtime.transform as t;"
            f"paths, labels, classes = s.scan_folder({str(dataset)!r});"
            "x = t.resize_image(t.to_chw(d.read_image(paths[0])), (32, 48), 'bicubic', 'timm', 0.9);"
            "assert x.shape == (3, 32, 48) and classes == ['a', 'b'];"
            "assert not {'torch', 'timm', 'torchvision'} & set(sys.modules), sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], env=no_torch_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True)
    assert r.returncode == 1  # the blocker works: torch really is not importable there
