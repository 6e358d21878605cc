"""One folder scan for training and the device: which files are images, which folders are classes.

An image is a file whose extension is in IMAGE_EXTENSIONS and that is not hidden: not a dotfile, not a macOS
AppleDouble file (`._photo.png`), not under a dot-folder or a `__MACOSX/` folder (judged below the dataset's root). A dataset ROOT holds ROOT/<class>/<image>
(images may sit deeper inside a class folder); its classes are the sorted names of the visible sub-folders that
hold at least one image.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
HIDDEN_PREFIXES = (".", "._")  # dotfiles and macOS AppleDouble files ("._photo.png") are not images
SKIPPED_DIRS = ("__MACOSX",)


def is_hidden(path: Path) -> bool:
    """A (relative) path that no dataset should read: a dotfile, an AppleDouble file, or anything under a hidden
    folder (`.cache/`, `.ipynb_checkpoints/`) or `__MACOSX/`."""
    return any(part.startswith(HIDDEN_PREFIXES) or part in SKIPPED_DIRS for part in Path(path).parts)


def image_files(folder: Path, root: Path | None = None) -> list[Path]:
    """The image files under `folder`, recursively, sorted; hidden is judged on the path relative to `root`
    (default: `folder`), so a dataset kept under a dot-folder is still read."""
    root = folder if root is None else root
    return [p for p in sorted(Path(folder).rglob("*"))
            if p.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(p.relative_to(root)) and p.is_file()]


def check_class_links(root: Path, classes: list[str]) -> None:
    """Refuse class folders that are links back into the dataset: a link to another class folder (its images would
    count twice, as a second class), to the root or a folder above it (a loop). A link elsewhere is followed once."""
    real_root = root.resolve()
    seen: dict[Path, str] = {}
    for c in classes:
        real = (root / c).resolve()
        if real == real_root or real in real_root.parents:
            raise DataError(f"class folder '{root / c}' is a link to '{real}', which holds the dataset itself (a loop)",
                            "remove the link")
        other = seen.get(real) or next((o for r, o in seen.items() if r in real.parents or real in r.parents), None)
        if other is not None:
            raise DataError(f"class folders '{c}' and '{other}' of '{root}' are the same images through a link",
                            "remove the link, or give the class a folder of its own images")
        seen[real] = c


def scan_folder(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(image paths, class indices, class names) of ROOT/<class>/<image>. DataError (exit 5): no class folders, no
    images, a class folder that is a link back into the dataset."""
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(Path(p.name)))
    if not folders:
        raise DataError(f"no class folders in '{root}'", "expected ROOT/<class>/<image>")
    check_class_links(root, folders)
    found = {c: image_files(root / c, root) for c in folders}
    classes = [c for c in folders if found[c]]
    if not classes:
        raise DataError(f"no images in '{root}'", f"supported extensions: {' '.join(IMAGE_EXTENSIONS)}")
    paths = [str(p) for c in classes for p in found[c]]
    labels = [i for i, c in enumerate(classes) for _ in found[c]]
    return paths, labels, classes
