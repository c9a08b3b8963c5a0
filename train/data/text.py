"""Text sources for the language models: token files that are never read whole into memory.

* the embedded default: the stdlib's ``pydoc_data.topics`` (~465 K bytes), split train/validation
  by topic, so validation text comes from topics never trained on;
* ``data.format=text`` (any file that is not ``.bin``): the file read by position as bytes
  (``data.tokenizer=bytes``), its last ``data.val_fraction`` held out; with
  ``data.tokenizer=sentencepiece`` the text is encoded once in memory (pre-tokenise large corpora
  with ``python -m launch.tokenizer --pretokenize``);
* ``data.format=tokens``: a nanoGPT-style ``.bin`` of uint16/uint32 token ids, read by position
  (``train/data/token_file.py``: windows are read with ``pread``, not mapped, so resident memory
  does not grow with the file).
  A ``val.bin`` next to a ``train.bin`` is its validation split; otherwise the tail is held out.

Batches are ``{"tokens": int32 [batch, seq_len + 1]}`` windows at random starts; the held-out
split is cut into non-overlapping windows, each token predicted once.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import numpy as np

from archlab.train.data.pipeline import EvalBatches, TrainStream, local_rows, random_starts
from archlab.train.data.token_file import TokenFile
from archlab.train.data.tokenizer import check_tokens_match, load_tokenizer, token_file
from archlab.train.errors import DataError


@dataclasses.dataclass(frozen=True)
class TokenSplits:
    train: np.ndarray | TokenFile  # bytes / token ids in memory, or a file read by position
    validation: np.ndarray
    source: str
    vocab_size: int = 256


def _is_validation_topic(name: str) -> bool:
    # crc32 is stable across Python runs and platforms (unlike hash()); ~1 topic in 10.
    return zlib.crc32(name.encode("utf-8")) % 10 == 0


def embedded_text_splits() -> TokenSplits:
    """The stdlib help-topics corpus as bytes, split train/validation by topic name."""
    from pydoc_data.topics import topics

    train_parts, val_parts = [], []
    for name in sorted(topics):
        text = topics[name].encode("utf-8") + b"\n"
        (val_parts if _is_validation_topic(name) else train_parts).append(text)
    to_array = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8)
    return TokenSplits(to_array(train_parts), to_array(val_parts), "pydoc_data.topics (stdlib)")


def embedded_text() -> str:
    """The whole embedded corpus as text (what ``launch.tokenizer`` trains on by default)."""
    data = embedded_text_splits()
    return (bytes(data.train) + bytes(data.validation)).decode("utf-8")


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist")
    if os.path.isdir(path):
        raise DataError(f"data path {path!r} is a directory; give a text file or a .bin token file")
    if not os.access(path, os.R_OK):
        raise DataError(f"data file {path!r} cannot be read (permission denied)")
    if os.path.getsize(path) == 0:
        raise DataError(f"data file {path!r} is empty")


def _tail_split(data: TokenFile, val_fraction: float, min_len: int, path: str, unit: str) -> tuple[TokenFile, TokenFile]:
    n_val = int(len(data) * val_fraction)
    if len(data) - n_val < min_len or n_val < min_len:
        need = int(np.ceil(min_len / min(val_fraction, 1 - val_fraction)))
        raise DataError(f"data file {path!r} has {len(data):,} {unit}; need at least {need:,} so both splits hold one "
                        f"sequence of data.seq_len+1={min_len} {unit}")
    return data.split(len(data) - n_val)


def file_text_splits(path: str, val_fraction: float, min_len: int) -> TokenSplits:
    """A text/bytes file, read by position, split into head (train) and tail (validation)."""
    _check_file(path)
    data = TokenFile(path, np.uint8)
    train, validation = _tail_split(data, val_fraction, min_len, path, "bytes")
    return TokenSplits(train, validation, path)


def token_file_splits(path: str, dtype: str, val_fraction: float, min_len: int, tokenizer) -> TokenSplits:
    """``train.bin`` (+ ``val.bin`` beside it) or one ``.bin`` whose tail is held out; checked against the tokenizer."""
    validation_path = os.path.join(os.path.dirname(path), "val.bin") if os.path.basename(path) == "train.bin" else ""
    check_tokens_match(path, tokenizer, dtype)
    data = token_file(path, dtype)
    if validation_path and os.path.exists(validation_path):
        check_tokens_match(validation_path, tokenizer, dtype)
        train, validation = data, token_file(validation_path, dtype)
        for name, split in ((path, train), (validation_path, validation)):
            if len(split) < min_len:
                raise DataError(f"token file {name!r} holds {len(split):,} tokens; need at least data.seq_len+1={min_len}")
        source = f"{path} + {validation_path}"
    else:
        train, validation = _tail_split(data, val_fraction, min_len, path, "tokens")
        source = path
    return TokenSplits(train, validation, f"{source} ({dtype} tokens, {tokenizer.describe()})", tokenizer.vocab_size)


def detect_text_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return "tokens" if path.endswith(".bin") else "text"


def load_token_splits(d, seq_len: int) -> TokenSplits:
    """The language-model splits ``config.data`` names (format, tokenizer, path)."""
    tokenizer = load_tokenizer(d.tokenizer, d.tokenizer_model)
    fmt = detect_text_format(d.path, d.format) if d.path else "text"
    if fmt not in ("text", "tokens"):
        raise DataError(f"data.format={fmt!r} is not a text format; valid for language models: auto, text, tokens")
    if fmt == "tokens":
        if not d.path:
            raise DataError("data.format=tokens needs data.path (a .bin file of token ids; python -m launch.tokenizer --pretokenize writes one)")
        return token_file_splits(d.path, d.token_dtype, d.val_fraction, seq_len + 1, tokenizer)
    splits = file_text_splits(d.path, d.val_fraction, seq_len + 1) if d.path else embedded_text_splits()
    if tokenizer.name == "bytes":
        return splits
    as_bytes = lambda data: data.read(0, len(data)).tobytes() if isinstance(data, TokenFile) else bytes(data)
    encode = lambda data: tokenizer.encode(as_bytes(data).decode("utf-8", errors="replace")).astype(np.int32)
    train, validation = encode(splits.train), encode(splits.validation)
    for name, split in (("training", train), ("validation", validation)):
        if len(split) < seq_len + 1:
            raise DataError(f"the {name} text encodes to {len(split):,} tokens; need at least data.seq_len+1={seq_len + 1}")
    return TokenSplits(train, validation, f"{splits.source} ({tokenizer.describe()})", tokenizer.vocab_size)


def windows(data: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """``data[start : start + length]`` for each start, as int32 [len(starts), length]."""
    if isinstance(data, TokenFile):
        return data.windows(starts, length)
    return np.asarray(data[starts[:, None] + np.arange(length)]).astype(np.int32)


def window_stream(data: np.ndarray, batch_size: int, seq_len: int, seed: int, *, shard: int, num_shards: int,
                  workers: int = 0, prefetch: int = 2) -> TrainStream:
    """Random windows of ``seq_len + 1`` tokens; batch ``i`` is a pure function of (seed, i)."""
    if len(data) < seq_len + 1:
        raise DataError(f"text of {len(data)} tokens is shorter than one window of {seq_len + 1}")
    count = len(data) - seq_len

    def batch_fn(position: int) -> dict:
        starts = local_rows(random_starts(seed, position, batch_size, count), shard, num_shards)
        return {"tokens": windows(data, starts, seq_len + 1)}

    return TrainStream(batch_fn, name=f"windows of {seq_len + 1} from {len(data):,} tokens", workers=workers, prefetch=prefetch)


def eval_windows(data: np.ndarray, seq_len: int, batch_size: int, limit: int = 0) -> EvalBatches:
    """Non-overlapping windows of ``seq_len + 1`` covering the split (each token predicted once), read lazily."""
    count = (len(data) - 1) // seq_len
    return EvalBatches(lambda rows: {"tokens": windows(data, rows * seq_len, seq_len + 1)}, count, batch_size, limit)
