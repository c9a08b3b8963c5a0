"""Tokenizers for the language models (bytes or sentencepiece), offline sentencepiece training,
and pre-tokenising a text file into a token file (nanoGPT .bin).

The .bin is nanoGPT's layout: raw little-endian uint16/uint32 ids, no header, so any tool can
read it by position (train/data/token_file.py). A JSON sidecar (``FILE.bin.json``) records which tokenizer made it, so training
with another model, dtype or a damaged file is refused instead of learning from garbage.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import re
from typing import Iterator, Protocol

import numpy as np

from archlab.train.data.token_file import TokenFile
from archlab.train.errors import DataError

TOKENIZERS = ("bytes", "sentencepiece")
TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_BLOCK_BYTES = 1 << 20  # pre-tokenising reads the text this much at a time
_SAMPLE_HEAD = 1 << 20  # check_tokens_match reads this many leading ids ...
_SAMPLE_RANDOM = 4096  # ... plus this many at random positions


class Tokenizer(Protocol):
    """What the LM data, training and sampling need from a tokenizer."""

    name: str  # "bytes" or "sentencepiece"
    vocab_size: int
    model_path: str  # "" for bytes
    model_sha256: str  # "" for bytes

    def encode(self, text: str) -> np.ndarray: ...  # int32 ids

    def decode(self, ids) -> str: ...

    def describe(self) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255: no model, nothing to train, every text encodes."""

    name = "bytes"
    vocab_size = 256
    model_path = ""
    model_sha256 = ""

    def encode(self, text: str) -> np.ndarray:
        # surrogateescape: text read with that handler (invalid UTF-8) gets its original bytes back
        return np.frombuffer(text.encode("utf-8", "surrogateescape"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            ids = np.where((ids >= 0) & (ids <= 255), ids, ord("?"))  # a model with a padded vocabulary
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def describe(self) -> str:
        return "bytes (UTF-8, vocab 256)"


class SentencePieceTokenizer:
    """A trained sentencepiece model (BPE or unigram) read from a ``.model`` file."""

    name = "sentencepiece"

    def __init__(self, model_path: str):
        import sentencepiece

        try:
            with open(model_path, "rb") as f:
                proto = f.read()
        except OSError as e:
            raise DataError(f"tokenizer model {model_path!r} cannot be read: {e.strerror}") from None
        if not proto:
            raise DataError(f"tokenizer model {model_path!r} is empty, not a sentencepiece model")
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
            size = self.sp.get_piece_size()
        except (RuntimeError, OSError, TypeError) as e:
            raise DataError(f"tokenizer model {model_path!r} is not a sentencepiece model ({_first_line(e)})") from None
        if size < 1:
            raise DataError(f"tokenizer model {model_path!r} is not a sentencepiece model (it holds no pieces)")
        self.vocab_size = int(size)
        self.model_path = os.path.abspath(model_path)
        self.model_sha256 = hashlib.sha256(proto).hexdigest()

    def encode(self, text: str) -> np.ndarray:
        try:
            ids = self.sp.encode(text)
        except UnicodeEncodeError:  # lone surrogates from text read with surrogateescape
            ids = self.sp.encode(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        return np.asarray(ids, np.int32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids, np.int64).reshape(-1)
        # a model whose embedding is larger than the vocabulary can emit ids with no piece
        ids = np.where((ids >= 0) & (ids < self.vocab_size), ids, max(self.sp.unk_id(), 0))
        return self.sp.decode(ids.tolist())

    def describe(self) -> str:
        return f"sentencepiece ({self.vocab_size} pieces, {self.model_path}, sha256 {self.model_sha256[:12]})"


def load_tokenizer(kind: str, model_path: str) -> Tokenizer:
    """The tokenizer ``data.tokenizer`` / ``data.tokenizer_model`` name (DataError on bad input)."""
    if kind not in TOKENIZERS:
        raise DataError(f"unknown data.tokenizer {kind!r}; valid: {', '.join(TOKENIZERS)}")
    if kind == "bytes":
        if model_path:
            raise DataError(f"data.tokenizer_model={model_path!r} is set but data.tokenizer=bytes; "
                            f"set --config.data.tokenizer=sentencepiece or leave data.tokenizer_model empty")
        return ByteTokenizer()
    if not model_path:
        raise DataError("data.tokenizer=sentencepiece needs data.tokenizer_model (a .model file; "
                        "python -m launch.tokenizer trains one)")
    if not os.path.exists(model_path):
        raise DataError(f"tokenizer model {model_path!r} does not exist")
    if os.path.isdir(model_path):
        raise DataError(f"tokenizer model {model_path!r} is a directory; give a sentencepiece .model file")
    return SentencePieceTokenizer(model_path)


def tokenizer_for_config(data_config) -> Tokenizer:
    """The tokenizer a run's ``config.data`` names (runs saved before tokenizers existed: bytes)."""
    return load_tokenizer(data_config.get("tokenizer", "bytes"), data_config.get("tokenizer_model", ""))


# ----------------------------------------------------------------------------- training


def train_sentencepiece(
    text_path: str,
    vocab_size: int,
    model_prefix: str,
    *,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    max_sentence_length: int = 4096,
) -> str:
    """Trains a sentencepiece model on a UTF-8 text file, offline; returns the ``.model`` path.

    Lossless by construction: no normalisation, whitespace kept as is, no dummy prefix, newline as
    its own piece and byte fallback, so ``decode(encode(text)) == text`` for any text without
    sentencepiece's space marker U+2581 (that one decodes to a space). Lines longer
    than ``max_sentence_length`` bytes are cut (sentencepiece would drop them). The same file gives
    the same model, byte for byte. ``PREFIX.model`` and ``PREFIX.vocab`` appear whole or not at all.
    """
    import sentencepiece

    if model_type not in ("bpe", "unigram"):
        raise DataError(f"unknown sentencepiece model type {model_type!r}; valid: bpe, unigram")
    if vocab_size < 2:
        raise DataError(f"vocab_size must be >= 2, got {vocab_size}")
    if not 0 < character_coverage <= 1:
        raise DataError(f"character_coverage must be in (0, 1], got {character_coverage}")
    _check_text_file(text_path)
    if not _has_text(text_path):
        raise DataError(f"text file {text_path!r} holds only whitespace; nothing to train a tokenizer on")
    writer = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(text_path, max_sentence_length), model_writer=writer,
            vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
            byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, user_defined_symbols=["\n"], allow_whitespace_only_pieces=True,
            max_sentence_length=max_sentence_length, input_sentence_size=0, minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(_trainer_error(text_path, vocab_size, str(e))) from None
    proto = writer.getvalue()
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    escape = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})  # one piece per line, tab before its score
    vocab = "".join(f"{sp.id_to_piece(i).translate(escape)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
    model_path = model_prefix + ".model"
    _write_atomically({model_path: proto, model_prefix + ".vocab": vocab.encode("utf-8")})
    return model_path


def _check_text_file(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"text file {path!r} does not exist")
    if not os.path.isfile(path):
        raise DataError(f"text path {path!r} is not a file")
    if os.path.getsize(path) == 0:
        raise DataError(f"text file {path!r} is empty")


def _has_text(path: str) -> bool:
    with open(path, "rb") as f:
        return any(block.strip() for block in iter(lambda: f.read(_BLOCK_BYTES), b""))


def _training_sentences(path: str, max_bytes: int) -> Iterator[str]:
    """The file's non-empty lines, streamed, each cut to at most ``max_bytes`` UTF-8 bytes."""
    step = max(1, max_bytes // 4)  # a character is at most 4 bytes
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        for line in f:
            line = line.rstrip("\n")
            for start in range(0, len(line), step):
                yield line[start : start + step]


def _trainer_error(path: str, vocab_size: int, message: str) -> str:
    """sentencepiece's trainer error as one line a user can act on."""
    if m := re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message):
        return f"vocab_size={vocab_size} is too large for the text in {path!r}; use at most {m.group(2)}"
    if m := re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message):
        return (f"vocab_size={vocab_size} is too small for the text in {path!r}: its characters and the 256 byte pieces "
                f"need at least {m.group(2)}; raise vocab_size or lower character_coverage")
    if "sentences_.empty()" in message:
        return f"text file {path!r} holds no text to train a tokenizer on"
    return f"sentencepiece could not train on {path!r}: {_first_line(message)}"


def _first_line(error) -> str:
    """sentencepiece's C++ status message without its status code and source location."""
    lines = str(error).strip().splitlines()
    text = re.sub(r"^[A-Z_]+: ", "", lines[0]) if lines else ""
    text = re.sub(r"^src/\S+\(\d+\) \[.*\]\s*", "", text).strip()
    return text or "it cannot be parsed"


def _write_atomically(files: dict[str, bytes]) -> None:
    """Writes each file under a temporary name, then renames them all; on failure nothing is left."""
    temps = {}
    try:
        for path, content in files.items():
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            temps[path] = f"{path}.tmp-{os.getpid()}"
            with open(temps[path], "wb") as f:
                f.write(content)
        for path, temp in temps.items():
            os.replace(temp, path)
    except OSError as e:
        for temp in temps.values():
            _remove_quietly(temp)
        raise DataError(f"cannot write {e.filename or next(iter(files))!r}: {e.strerror}") from None


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# ----------------------------------------------------------------------------- token memmaps


def _token_dtype(dtype: str) -> np.dtype:
    if dtype not in TOKEN_DTYPES:
        raise DataError(f"unknown data.token_dtype {dtype!r}; valid: {', '.join(TOKEN_DTYPES)}")
    return TOKEN_DTYPES[dtype]


def _text_blocks(path: str) -> Iterator[str]:
    """The file as text in ~1 MiB blocks that end at a newline (one huge line: anywhere between
    characters), so memory stays flat however large the file is."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")  # holds back split characters
    carry = ""
    with open(path, "rb") as f:
        while block := f.read(_BLOCK_BYTES):
            text = carry + decoder.decode(block)
            cut = text.rfind("\n") + 1 or len(text)
            carry = text[cut:]
            if cut:
                yield text[:cut]
    if tail := carry + decoder.decode(b"", final=True):
        yield tail


def pretokenize(text_path: str, tokenizer: Tokenizer, out_path: str, dtype: str = "uint16", *, source: str = "") -> dict:
    """Encodes a text file into ``out_path`` (raw little-endian ids) and ``out_path + ".json"``
    (which tokenizer made it, and ``source``: the text's path unless given); returns that metadata.
    Streams the text; writes atomically."""
    np_dtype = _token_dtype(dtype)
    limit = np.iinfo(np_dtype).max + 1
    if tokenizer.vocab_size > limit:
        raise DataError(f"a vocabulary of {tokenizer.vocab_size} ids does not fit {dtype} (at most {limit}); use uint32")
    _check_text_file(text_path)
    if os.path.abspath(text_path) == os.path.abspath(out_path):
        raise DataError(f"the token file {out_path!r} would overwrite its own text")
    temp = f"{out_path}.tmp-{os.getpid()}"
    num_tokens = 0
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(temp, "wb") as f:
            for text in _text_blocks(text_path):
                ids = tokenizer.encode(text)
                f.write(ids.astype(np_dtype).tobytes())
                num_tokens += len(ids)
    except OSError as e:
        _remove_quietly(temp)
        raise DataError(f"cannot write {out_path!r}: {e.strerror}") from None
    except BaseException:
        _remove_quietly(temp)
        raise
    if num_tokens == 0:
        _remove_quietly(temp)
        raise DataError(f"text file {text_path!r} encodes to no tokens")
    meta = {
        "tokenizer": tokenizer.name, "tokenizer_model": tokenizer.model_path, "model_sha256": tokenizer.model_sha256,
        "vocab_size": int(tokenizer.vocab_size), "dtype": dtype, "num_tokens": num_tokens,
        "source": source or os.path.abspath(text_path),
    }
    try:
        _write_atomically({out_path + ".json": (json.dumps(meta, indent=1) + "\n").encode("utf-8")})
        os.replace(temp, out_path)
    finally:
        _remove_quietly(temp)
    return meta


def read_token_metadata(bin_path: str) -> dict | None:
    """The sidecar ``bin_path + ".json"`` written by :func:`pretokenize`, or None if there is none."""
    path = bin_path + ".json"
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"token metadata {path!r} cannot be read ({e}); delete it or pre-tokenise again") from None
    if not isinstance(meta, dict):
        raise DataError(f"token metadata {path!r} is not a JSON object; delete it or pre-tokenise again")
    return meta


def token_file(bin_path: str, dtype: str) -> TokenFile:
    """The token file, read by position (DataError if it is missing or the wrong size)."""
    np_dtype = _token_dtype(dtype)
    if not os.path.isfile(bin_path):
        raise DataError(f"token file {bin_path!r} does not exist" if not os.path.exists(bin_path)
                        else f"token path {bin_path!r} is not a file")
    size = os.path.getsize(bin_path)
    if size == 0:
        raise DataError(f"token file {bin_path!r} is empty")
    if size % np_dtype.itemsize:
        raise DataError(f"token file {bin_path!r} is {size} bytes, not a multiple of {dtype}'s {np_dtype.itemsize}: "
                        f"a wrong data.token_dtype or a truncated file")
    return TokenFile(bin_path, np_dtype)


def check_tokens_match(bin_path: str, tokenizer: Tokenizer, dtype: str) -> int:
    """Refuses (DataError, one line) a token file made by another tokenizer or read with the wrong
    dtype; returns its number of tokens. Reads the sidecar and a sample of ids, never the whole file."""
    meta = read_token_metadata(bin_path)
    where = f"token file {bin_path!r}"
    if meta is not None:
        made_by = meta.get("tokenizer")
        if made_by != tokenizer.name:
            raise DataError(f"{where} was made with the {made_by} tokenizer (its .json) but data.tokenizer={tokenizer.name}")
        if meta.get("model_sha256", "") != tokenizer.model_sha256:
            raise DataError(f"{where} was made with another tokenizer model ({meta.get('tokenizer_model')!r}, sha256 "
                            f"{str(meta.get('model_sha256'))[:12]}) than {tokenizer.model_path!r} (sha256 "
                            f"{tokenizer.model_sha256[:12]}); use that model or pre-tokenise again")
        if meta.get("dtype") != dtype:
            raise DataError(f"{where} holds {meta.get('dtype')} ids (its .json) but data.token_dtype={dtype}")
    tokens = token_file(bin_path, dtype)
    if meta is not None and meta.get("num_tokens") != len(tokens):
        raise DataError(f"{where} holds {len(tokens)} {dtype} ids but its .json records {meta.get('num_tokens')}: "
                        f"a truncated or rewritten file; pre-tokenise again")
    head = tokens.read(0, min(_SAMPLE_HEAD, len(tokens)))
    positions = np.sort(np.random.default_rng(0).integers(0, len(tokens), size=min(_SAMPLE_RANDOM, len(tokens))))
    sample = np.concatenate([head, tokens.windows(positions, 1).ravel()]).astype(np.int64)
    if (bad := np.flatnonzero(sample >= tokenizer.vocab_size)).size:
        raise DataError(f"{where} holds id {int(sample[bad[0]])} >= the tokenizer's vocab_size {tokenizer.vocab_size}: "
                        f"a tokenizer model that does not match the data, or a wrong data.token_dtype")
    if meta is None and dtype == "uint16" and len(head) >= 64 and not head[1::2].any() and head[0::2].any():
        raise DataError(f"{where} has 0 in every second uint16, like uint32 ids read as uint16; "
                        f"set --config.data.token_dtype=uint32")
    return len(tokens)
