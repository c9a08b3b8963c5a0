"""TFRecord and ArrayRecord files of ``tf.train.Example`` as grain random-access sources.

Records decode to ``{"image": uint8 [H, W, C], "label": np.int32}``. Neither tensorflow nor protobuf
is imported: the TFRecord framing (with its CRC32C) is read and written here and the Example wire
format in ``example_format.py``, so TFDS-made and ``tf.io.TFRecordWriter``-made files work, and
files written here read in TF.
Construction indexes record offsets only (memory O(records)); ``__getitem__`` reads one record.
"""

from __future__ import annotations

import abc
import array
import hashlib
import io
import operator
import os
import re
import struct
from typing import Iterable

import numpy as np
from PIL import Image

from archlab.train.data.example_format import encode_example, parse_example
from archlab.train.data.image_folder import decode_image
from archlab.train.errors import DataError

# ---------------------------------------------------------------- CRC32C (Castagnoli), TFRecord masking


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C of ``data`` (pure Python, ~15 MB/s: fine for headers and tools, not for a hot loop)."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC TFRecord stores: rotated right by 15 bits plus a constant, mod 2**32."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------- one labelled image as Example features


def image_example(image: np.ndarray, label: int, *, encoding: str = "png",
                  image_key: str = "image", label_key: str = "label") -> dict:
    """The features of one labelled uint8 [H, W, C] image: PNG/JPEG-encoded, or ``raw`` bytes with
    height/width/channels features."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if encoding == "raw":
        return {image_key: image.tobytes(), "height": image.shape[0], "width": image.shape[1],
                "channels": image.shape[2], label_key: int(label)}
    if encoding not in ("png", "jpeg"):
        raise DataError(f"image encoding {encoding!r} is not one of png, jpeg, raw")
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format=encoding.upper())
    return {image_key: buffer.getvalue(), label_key: int(label)}


# ---------------------------------------------------------------- Example -> {"image", "label"}


def _dimension(features: dict, image_key: str, name: str) -> int | None:
    """A raw image's height/width/channels feature (TFDS style ``image/height`` beside ``image/encoded``)."""
    prefix = image_key.rpartition("/")[0]
    for key in (f"{prefix}/{name}", name) if prefix else (name,):
        values = features.get(key)
        if values and len(values) == 1 and isinstance(values[0], int):
            return values[0]
    return None


def _record_from_features(features: dict, where: str, image_key: str, label_key: str) -> dict:
    missing = [key for key in (image_key, label_key) if key not in features]
    if missing:
        raise DataError(f"{where}: no feature {missing[0]!r} (it has {', '.join(sorted(features)) or 'no features'}); "
                        f"set the source's image_key/label_key")
    data = features[image_key]
    if len(data) != 1 or not isinstance(data[0], bytes):
        raise DataError(f"{where}: feature {image_key!r} should hold one bytes value (an encoded or raw image)")
    shape = tuple(_dimension(features, image_key, d) for d in ("height", "width", "channels"))
    if None in shape:
        image = decode_image(data[0], where)
    elif shape[0] * shape[1] * shape[2] == len(data[0]) and min(shape) > 0:
        image = np.frombuffer(data[0], np.uint8).reshape(shape).copy()
    else:
        raise DataError(f"{where}: raw image of {len(data[0])} bytes is not height*width*channels={shape}")
    return {"image": image, "label": _label(features, where, label_key)}


def _label(features: dict, where: str, label_key: str) -> np.int32:
    values = features.get(label_key)
    if values is None:
        raise DataError(f"{where}: no label feature {label_key!r}; set the source's label_key")
    if len(values) != 1 or not isinstance(values[0], int):
        raise DataError(f"{where}: label feature {label_key!r} should be one int64, is {values[:4]!r}")
    if not -(1 << 31) <= values[0] < 1 << 31:
        raise DataError(f"{where}: label {values[0]} does not fit in int32")
    return np.int32(values[0])


def _describe_files(paths: list[str]) -> str:
    if len(paths) <= 4:
        return repr(paths)
    digest = hashlib.sha1("\n".join(paths).encode("utf-8")).hexdigest()[:12]
    return f"[{paths[0]!r}, ..., {paths[-1]!r}] ({len(paths)} files, sha1 {digest})"


def _path_list(paths) -> list[str]:
    paths = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not paths:
        raise DataError("no record files given")
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"record file {path!r} {'is not a file' if os.path.exists(path) else 'does not exist'}")
    return paths


class _ExampleSource(abc.ABC):
    """What both record formats share: Example bytes -> {"image", "label"}, sequence indexing, labels().

    ``num_classes`` is what the caller passes (None: unknown; ``labels().max() + 1`` finds it).
    """

    def __init__(self, paths: list[str], counts: list[int], image_key: str, label_key: str, num_classes: int | None):
        self.paths, self.image_key, self.label_key, self.num_classes = paths, image_key, label_key, num_classes
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        if self._starts[-1] == 0:
            raise DataError(f"record files {_describe_files(paths)} hold no records")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index) -> tuple[int, int, int]:
        """(global index, file number, index within that file)."""
        index = operator.index(index)
        index += len(self) if index < 0 else 0
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        file = int(np.searchsorted(self._starts, index, side="right")) - 1
        return index, file, index - int(self._starts[file])

    def _where(self, file: int, local: int) -> str:
        return f"{self.paths[file]}: record {local}"

    @abc.abstractmethod
    def _example(self, index) -> tuple[bytes, str]:
        """(the serialized Example of record ``index``, where it is): each format's reader supplies this."""

    def _features(self, index, keys=None) -> tuple[dict, str]:
        data, where = self._example(index)
        try:
            return parse_example(data, keys), where
        except ValueError as e:
            raise DataError(f"{where}: not a tf.train.Example ({' '.join(str(e).split())})") from None

    def __getitem__(self, index: int) -> dict:
        features, where = self._features(index)
        return _record_from_features(features, where, self.image_key, self.label_key)

    def labels(self) -> np.ndarray:
        """Every record's label as int32. Costs one read and Example parse per record (images are not
        decoded): fine for small data and tests, minutes for millions of records."""
        labels = np.empty(len(self), np.int32)
        for i in range(len(self)):
            features, where = self._features(i, (self.label_key,))
            labels[i] = _label(features, where, self.label_key)
        return labels

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({_describe_files(self.paths)}, {len(self)} records, "
                f"image_key={self.image_key!r}, label_key={self.label_key!r})")


# ---------------------------------------------------------------- TFRecord


def _index_tfrecord(path: str) -> tuple[np.ndarray, np.ndarray]:
    """int64 (payload offsets, payload lengths) from the 12-byte headers, read with seeks (payloads skipped)."""
    offsets, lengths = array.array("q"), array.array("q")
    with open(path, "rb", buffering=0) as f:
        size, fd, pos = os.fstat(f.fileno()).st_size, f.fileno(), 0
        while pos < size:
            header, record = os.pread(fd, 12, pos), len(offsets)
            if len(header) < 12:
                raise DataError(f"{path}: truncated: record {record} at byte {pos} has a {len(header)}-byte header "
                                f"(TFRecord headers are 12 bytes)")
            length, crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != crc:
                raise DataError(f"{path}: record {record} at byte {pos}: its length fails the header CRC "
                                f"(not a TFRecord file, or corrupt)")
            if pos + 16 + length > size:
                raise DataError(f"{path}: truncated: record {record} at byte {pos} needs {length + 16} bytes, "
                                f"the file has {size - pos} left")
            offsets.append(pos + 12)
            lengths.append(length)
            pos += 16 + length
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


class TFRecordSource(_ExampleSource):
    """TFRecord files of ``tf.train.Example`` (e.g. TFDS's ``NAME-train.tfrecord-00000-of-00004``).

    Verified: every length header's CRC (at construction) and the file's framing (no truncation).
    The payload CRC is checked on read only with ``verify_data_crc=True`` (pure-Python CRC32C,
    ~0.2 ms per 3 KB record); without it a corrupt payload surfaces as a parse or decode DataError.
    Images are ``image_key`` bytes: encoded JPEG/PNG, or raw uint8 with height/width/channels
    features; labels are the int64 ``label_key`` (TFDS: ``image/encoded``, ``image/class/label``).
    """

    def __init__(self, paths: list[str], image_key: str = "image", label_key: str = "label", *,
                 num_classes: int | None = None, verify_data_crc: bool = False):
        paths = _path_list(paths)
        offsets, lengths = zip(*(_index_tfrecord(path) for path in paths))
        super().__init__(paths, [len(o) for o in offsets], image_key, label_key, num_classes)
        self._offsets, self._lengths = np.concatenate(offsets), np.concatenate(lengths)
        self.verify_data_crc = verify_data_crc
        self._handles: dict[int, object] = {}  # file number -> open file, per process (see __getstate__)

    def _example(self, index) -> tuple[bytes, str]:
        index, file, local = self._locate(index)
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = open(self.paths[file], "rb", buffering=0)
        length, where = int(self._lengths[index]), self._where(file, local)
        data = os.pread(handle.fileno(), length + 4, int(self._offsets[index]))
        if len(data) < length + 4:
            raise DataError(f"{where}: file shrank since it was indexed")
        if self.verify_data_crc and masked_crc32c(data[:length]) != struct.unpack("<I", data[length:])[0]:
            raise DataError(f"{where}: payload fails its CRC (corrupt file)")
        return data[:length], where

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles do not cross processes; each worker opens its own
        return state


def write_tfrecord(path: str, examples: Iterable) -> int:
    """Writes a TFRecord file (real masked CRCs) of Examples given as feature dicts (see
    ``encode_example``) or as already serialized bytes; returns the number of records."""
    count = 0
    with open(path, "wb") as f:
        for example in examples:
            payload = bytes(example) if isinstance(example, (bytes, bytearray)) else encode_example(example)
            length = struct.pack("<Q", len(payload))
            f.write(length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload)))
            count += 1
    return count


# ---------------------------------------------------------------- ArrayRecord


def _array_record_count(path: str) -> int:
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(path)
    except (RuntimeError, ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable ArrayRecord file ({' '.join(str(e).split())})") from None
    if not reader.ok():  # close() would raise the reader's error; the object is dropped instead
        raise DataError(f"{path}: not an ArrayRecord file")
    count = reader.num_records()
    reader.close()
    return count


class ArrayRecordSource(_ExampleSource):
    """ArrayRecord files (grain's native format) of serialized ``tf.train.Example``, decoded as
    ``TFRecordSource`` does; reading goes through grain's ``ArrayRecordDataSource`` (its own checksums)."""

    def __init__(self, paths: list[str], image_key: str = "image", label_key: str = "label", *,
                 num_classes: int | None = None):
        import grain.python as grain

        paths = _path_list(paths)
        counts = [_array_record_count(path) for path in paths]
        super().__init__(paths, counts, image_key, label_key, num_classes)
        # "path[start:end]" tells grain the record count, so it does not reopen every file to count.
        self._source = grain.ArrayRecordDataSource([f"{p}[0:{n}]" for p, n in zip(paths, counts)])

    def _example(self, index) -> tuple[bytes, str]:
        index, file, local = self._locate(index)
        where = self._where(file, local)
        try:
            return self._source[index], where
        except (RuntimeError, ValueError) as e:
            raise DataError(f"{where}: cannot be read ({' '.join(str(e).split())})") from None


def write_array_record(path: str, examples: Iterable) -> int:
    """Writes an ArrayRecord file (group_size:1, as grain wants for random access) of Examples given
    as feature dicts or serialized bytes; returns the number of records."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer, count = ArrayRecordWriter(os.fspath(path), "group_size:1"), 0
    try:
        for example in examples:
            writer.write(bytes(example) if isinstance(example, (bytes, bytearray)) else encode_example(example))
            count += 1
    finally:
        writer.close()
    return count


# ---------------------------------------------------------------- splits

_SPLIT_WORDS = {"train": "train", "test": "test", "validation": "validation", "valid": "validation", "val": "validation"}
_SPLIT_PATTERN = re.compile(r"(?<![a-z])(train|test|validation|valid|val)(?![a-z])")


def record_split_files(path: str, extensions: Iterable[str]) -> dict[str, list[str]]:
    """Record files by split: a file whose name has the word train/test/validation (valid, val) goes
    to that split (words, so ``latest`` is not ``test``); a single file, or a directory whose files
    name no split, is all "train". Files are sorted (shard order)."""
    path = os.fspath(path)
    extensions = tuple(e if e.startswith(".") else f".{e}" for e in extensions)
    if os.path.isfile(path):
        return {"train": [path]}
    if not os.path.isdir(path):
        raise DataError(f"record path {path!r} does not exist")
    with os.scandir(path) as entries:  # TFDS shards: x.tfrecord-00000-of-00004 has extension .tfrecord
        names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith(".")
                       and any(e.name.endswith(x) or f"{x}-" in e.name for x in extensions))
    if not names:
        raise DataError(f"record directory {path!r} has no {' or '.join(repr(e) for e in extensions)} files")
    splits: dict[str, list[str]] = {}
    unnamed = []
    for name in names:
        found = {_SPLIT_WORDS[w] for w in _SPLIT_PATTERN.findall(name.lower())}
        if len(found) > 1:
            raise DataError(f"record file {os.path.join(path, name)!r} names several splits ({', '.join(sorted(found))}); rename it")
        if found:
            splits.setdefault(found.pop(), []).append(os.path.join(path, name))
        else:
            unnamed.append(name)
    if not splits:
        return {"train": [os.path.join(path, n) for n in names]}
    if unnamed:
        raise DataError(f"record file {os.path.join(path, unnamed[0])!r} names no split (train/test/validation) "
                        f"while others in {path!r} do; rename or move it")
    return splits
