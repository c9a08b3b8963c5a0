"""Image folders (``root/CLASS/*.jpg|png``) as a grain random-access source, plus the image
decode/resize helpers every image source shares.

Construction only lists file names (memory O(images)); ``__getitem__`` reads and decodes one file.
Labels are class indices in sorted class-name order, so the same folders always give the same labels.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from archlab.train.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Split directory name -> split; "train" plus any of the others means a split layout.
SPLIT_DIRS = {"train": "train", "test": "test", "val": "validation", "validation": "validation"}


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded JPEG/PNG/... bytes as uint8 [H, W, C]: L keeps 1 channel, RGB 3, other modes become RGB.

    ``where`` names the file (and record) in the one-line DataError raised for undecodable bytes.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            array = np.array(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot decode image ({_one_line(e)})") from None
    return array[:, :, None] if array.ndim == 2 else array


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] resized to [size, size, C] with PIL's bilinear filter (aspect ratio is not
    kept); ``size`` 0, or an image already that size, returns ``image`` unchanged."""
    if size == 0 or image.shape[:2] == (size, size):
        return image
    channels = [Image.fromarray(np.ascontiguousarray(image[:, :, c])) for c in range(image.shape[2])]
    resized = [np.asarray(c.resize((size, size), Image.BILINEAR)) for c in channels]
    return np.stack(resized, axis=-1)


def _subdirs(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _images_in(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries
                      if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))


class ImageFolderSource:
    """``root/CLASS/*.{jpg,jpeg,png}`` (or ``root/split_dir/CLASS/...``) as records
    ``{"image": uint8 [H, W, C], "label": np.int32}``; label = index of CLASS among the sorted class folders.

    Images keep their own size; the pipeline resizes (``resize_image``) when sizes differ.
    """

    def __init__(self, root: str, split_dir: str | None = None):
        self.root = os.fspath(root)
        self.split_dir = split_dir
        self.directory = os.path.join(self.root, split_dir) if split_dir else self.root
        if not os.path.isdir(self.directory):
            what = "does not exist" if not os.path.exists(self.directory) else "is not a directory"
            raise DataError(f"image folder {self.directory!r} {what}")
        self.class_names = tuple(_subdirs(self.directory))
        if not self.class_names:
            loose = " (it holds loose images; put each class in its own folder)" if _images_in(self.directory) else ""
            raise DataError(f"image folder {self.directory!r} has no class folders; expected "
                            f"{os.path.join(self.directory, 'CLASS_NAME', '*.jpg')} (or .jpeg/.png){loose}")
        self.num_classes = len(self.class_names)
        self._files: list[str] = []  # CLASS/name, relative to self.directory
        labels = []
        for label, name in enumerate(self.class_names):
            images = _images_in(os.path.join(self.directory, name))
            if not images:
                raise DataError(f"class folder {os.path.join(self.directory, name)!r} holds no "
                                f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images")
            self._files.extend(f"{name}/{image}" for image in images)
            labels.extend([label] * len(images))
        self._labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict:
        path = os.path.join(self.directory, self._files[index])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataError(f"{path}: cannot be read ({e.strerror})") from None
        return {"image": decode_image(data, path), "label": np.int32(self._labels[index])}

    def labels(self) -> np.ndarray:
        """Every record's label as int32, without reading any image (cheap)."""
        return self._labels.copy()

    def file_name(self, index: int) -> str:
        """The path of record ``index`` (for error messages that name a bad image)."""
        return os.path.join(self.directory, self._files[index])

    def __repr__(self) -> str:
        return (f"ImageFolderSource(root={self.root!r}, split_dir={self.split_dir!r}, "
                f"{len(self)} images, {self.num_classes} classes)")


def image_folder_splits(root: str) -> dict[str, ImageFolderSource]:
    """The splits of an image folder: ``{"train", "test" and/or "validation"}`` when ``root/train/``
    sits beside ``root/test/`` (``val/`` or ``validation/`` give "validation"), else ``{"train": all of root}``.

    Every held-out split must have exactly the train split's classes (else labels would not match).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.exists(root) else "is not a directory"
        raise DataError(f"image folder {root!r} {what}")
    dirs = [d for d in _subdirs(root) if d.lower() in SPLIT_DIRS]
    held_out = [d for d in dirs if SPLIT_DIRS[d.lower()] != "train"]
    train_dirs = [d for d in dirs if SPLIT_DIRS[d.lower()] == "train"]
    if not train_dirs or not held_out:
        return {"train": ImageFolderSource(root)}
    splits = {"train": ImageFolderSource(root, train_dirs[0])}
    for directory in held_out:
        split = SPLIT_DIRS[directory.lower()]
        if split in splits:
            raise DataError(f"image folder {root!r} has both {splits[split].split_dir!r} and {directory!r}; keep one")
        source = ImageFolderSource(root, directory)
        if source.class_names != splits["train"].class_names:
            train_names, names = set(splits["train"].class_names), set(source.class_names)
            diff = [f"{directory} lacks {sorted(train_names - names)}"] if train_names - names else []
            diff += [f"{train_dirs[0]} lacks {sorted(names - train_names)}"] if names - train_names else []
            raise DataError(f"image folder {root!r}: {directory}/ and {train_dirs[0]}/ have different classes ({'; '.join(diff)})")
        splits[split] = source
    return splits
