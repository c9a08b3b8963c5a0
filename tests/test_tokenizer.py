"""Tokenizers: sentencepiece training through the CLI, lossless round trips, pre-tokenised token
memmaps and the checks that refuse a mismatched one, bad input, and decoding in sampling."""

import json
import os

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from archlab.train.data import DataError
from archlab.train.data import tokenizer as tok
from archlab.train.data.tokenizer import (ByteTokenizer, check_tokens_match, load_tokenizer, pretokenize, read_token_metadata,
                                  train_sentencepiece)

# a few lines the training text lacks: characters it never saw (byte fallback), runs of spaces, tabs, CRLF
AWKWARD = "  leading spaces\n\n\ttab, café, 日本語, emoji 😀\r\nmixed   runs   of spaces \u2028 end"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pydoc_data.topics import topics

    text = "".join(topics[name] + "\n" for name in sorted(topics))[:300_000]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return str(path), text


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A 400-piece BPE model trained through the CLI, with the corpus pre-tokenised."""
    out = tmp_path_factory.mktemp("tok")
    proc = run_cli("launch.tokenizer", f"--data.path={corpus[0]}", "--vocab_size=400", f"--out={out}/", "--pretokenize")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_cli_trains_a_model_and_prints_the_train_flags(trained):
    out, proc = trained
    model, bin_path = out / "corpus_sp400.model", out / "corpus_sp400.bin"
    assert model.exists() and (out / "corpus_sp400.vocab").exists() and bin_path.exists()
    assert not [name for name in os.listdir(out) if ".tmp-" in name]
    assert (f"python -m launch.train --model=transformer --config.data.tokenizer=sentencepiece "
            f"--config.data.tokenizer_model={model} --config.model.vocab_size=400") in proc.stdout
    assert f"--config.data.format=tokens --config.data.path={bin_path}" in proc.stdout
    assert len((out / "corpus_sp400.vocab").read_text(encoding="utf-8").splitlines()) == 400


def test_cli_defaults_to_the_embedded_corpus_and_reuses_a_model(trained, tmp_path):
    proc = run_cli("launch.tokenizer", "--vocab_size=300", f"--out={tmp_path}/emb")
    assert_one_line_error(proc, "too small for the text in pydoc_data.topics (the embedded corpus)", "at least")
    proc = run_cli("launch.tokenizer", "--vocab_size=400", f"--out={tmp_path}/emb")
    assert proc.returncode == 0, proc.stderr
    assert "trained on pydoc_data.topics (stdlib)" in proc.stdout and (tmp_path / "emb.model").exists()
    assert "--config.data.path" not in proc.stdout  # the embedded corpus is launch.train's default too
    model = trained[0] / "corpus_sp400.model"
    proc = run_cli("launch.tokenizer", f"--tokenizer_model={model}", f"--pretokenize={tmp_path}/t.bin", "--token_dtype=uint32")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "--config.data.token_dtype=uint32" in proc.stdout and "trained on" not in proc.stdout
    meta = read_token_metadata(str(tmp_path / "t.bin"))
    assert meta["source"] == "pydoc_data.topics (stdlib)" and meta["dtype"] == "uint32"
    assert meta["model_sha256"] == load_tokenizer("sentencepiece", str(model)).model_sha256


def test_sentencepiece_round_trips_text_exactly(trained, corpus):
    sp = load_tokenizer("sentencepiece", str(trained[0] / "corpus_sp400.model"))
    assert sp.name == "sentencepiece" and sp.vocab_size == 400 and len(sp.model_sha256) == 64
    for text in (corpus[1][:20_000], AWKWARD, "", "\n"):
        ids = sp.encode(text)
        assert ids.dtype == np.int32 and (ids < 400).all()
        assert sp.decode(ids) == text
    assert len(sp.encode(corpus[1][:20_000])) < 20_000  # pieces, not bytes
    assert "400 pieces" in sp.describe()


def test_training_is_deterministic_and_unigram_works(trained, corpus, tmp_path):
    first = train_sentencepiece(corpus[0], 400, str(tmp_path / "again"))
    assert open(first, "rb").read() == (trained[0] / "corpus_sp400.model").read_bytes()
    unigram = [train_sentencepiece(corpus[0], 450, str(tmp_path / f"uni{i}"), model_type="unigram") for i in range(2)]
    assert open(unigram[0], "rb").read() == open(unigram[1], "rb").read()
    sp = load_tokenizer("sentencepiece", unigram[0])
    assert sp.vocab_size == 450 and sp.decode(sp.encode(AWKWARD)) == AWKWARD


def test_long_lines_are_cut_for_training_not_dropped(tmp_path):
    text = ("word " * 5000 + "\n") * 3  # 25 KB lines; sentencepiece skips lines over max_sentence_length
    path = tmp_path / "long.txt"
    path.write_text(text)
    sp = load_tokenizer("sentencepiece", train_sentencepiece(str(path), 270, str(tmp_path / "m")))
    assert "▁word" in [sp.sp.id_to_piece(i) for i in range(sp.vocab_size)]  # learned from the cut lines
    assert sp.decode(sp.encode(text)) == text


def test_trainer_errors_are_one_line_and_leave_nothing(corpus, tmp_path):
    with pytest.raises(DataError, match=r"vocab_size=100000 is too large .* use at most \d+"):
        train_sentencepiece(corpus[0], 100_000, str(tmp_path / "big"))
    with pytest.raises(DataError, match=r"too small .* need at least \d+"):
        train_sentencepiece(corpus[0], 260, str(tmp_path / "small"))
    (tmp_path / "blank.txt").write_text(" \n\n  \n")
    with pytest.raises(DataError, match="only whitespace"):
        train_sentencepiece(str(tmp_path / "blank.txt"), 300, str(tmp_path / "blank"))
    assert sorted(os.listdir(tmp_path)) == ["blank.txt"]


def test_pretokenized_memmap_decodes_to_the_text(trained, corpus):
    out = trained[0]
    sp = load_tokenizer("sentencepiece", str(out / "corpus_sp400.model"))
    meta = read_token_metadata(str(out / "corpus_sp400.bin"))
    assert meta == {"tokenizer": "sentencepiece", "tokenizer_model": str(out / "corpus_sp400.model"),
                    "model_sha256": sp.model_sha256, "vocab_size": 400, "dtype": "uint16",
                    "num_tokens": meta["num_tokens"], "source": corpus[0]}
    assert os.path.getsize(out / "corpus_sp400.bin") == meta["num_tokens"] * 2
    ids = np.fromfile(out / "corpus_sp400.bin", dtype="<u2")
    assert sp.decode(ids) == corpus[1]
    assert check_tokens_match(str(out / "corpus_sp400.bin"), sp, "uint16") == meta["num_tokens"]
    assert read_token_metadata(str(out / "nothing.bin")) is None


def test_pretokenize_streams_blocks_without_splitting_characters(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(tok, "_BLOCK_BYTES", 7)  # blocks cut mid-character and mid-line
    text = AWKWARD * 3 + "ü" * 50 + "\nno newline at the end é"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8", newline="")
    sp = load_tokenizer("sentencepiece", str(trained[0] / "corpus_sp400.model"))
    meta = pretokenize(str(tmp_path / "t.txt"), sp, str(tmp_path / "t.bin"), "uint32")
    ids = np.fromfile(tmp_path / "t.bin", dtype="<u4")
    assert len(ids) == meta["num_tokens"] and sp.decode(ids) == text
    # bytes: the file's exact bytes, invalid UTF-8 included
    raw = "déjà vu\n".encode() * 5 + b"\xff\xfe bad \xc3"
    (tmp_path / "raw.txt").write_bytes(raw)
    meta = pretokenize(str(tmp_path / "raw.txt"), ByteTokenizer(), str(tmp_path / "raw.bin"))
    assert meta["tokenizer"] == "bytes" and meta["vocab_size"] == 256 and meta["model_sha256"] == ""
    assert np.fromfile(tmp_path / "raw.bin", dtype="<u2").astype(np.uint8).tobytes() == raw


class _HugeVocab(ByteTokenizer):
    name, vocab_size = "fake", 70_000


def test_uint16_is_refused_for_a_vocabulary_over_65536(corpus, tmp_path):
    with pytest.raises(DataError, match="70000 ids does not fit uint16.*use uint32"):
        pretokenize(corpus[0], _HugeVocab(), str(tmp_path / "x.bin"), "uint16")
    assert pretokenize(corpus[0], _HugeVocab(), str(tmp_path / "x.bin"), "uint32")["dtype"] == "uint32"
    with pytest.raises(DataError, match="unknown data.token_dtype 'int8'"):
        pretokenize(corpus[0], ByteTokenizer(), str(tmp_path / "y.bin"), "int8")


def test_check_tokens_match_refuses_mismatched_files(trained, corpus, tmp_path):
    out = trained[0]
    sp = load_tokenizer("sentencepiece", str(out / "corpus_sp400.model"))
    good = np.fromfile(out / "corpus_sp400.bin", dtype="<u2")[:5000]
    # uint32 ids read as uint16, no sidecar: every second uint16 is zero
    good.astype("<u4").tofile(tmp_path / "wide.bin")
    with pytest.raises(DataError, match="like uint32 ids read as uint16.*token_dtype=uint32"):
        check_tokens_match(str(tmp_path / "wide.bin"), sp, "uint16")
    # uint16 ids read as uint32: ids far beyond the vocabulary
    good.tofile(tmp_path / "narrow.bin")
    with pytest.raises(DataError, match=">= the tokenizer's vocab_size 400: a tokenizer model that does not match"):
        check_tokens_match(str(tmp_path / "narrow.bin"), sp, "uint32")
    # a size that is no multiple of the dtype
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(DataError, match="not a multiple of uint16's 2"):
        check_tokens_match(str(tmp_path / "odd.bin"), sp, "uint16")
    # out-of-vocabulary ids (made by a bigger model)
    np.array([5, 17, 399, 450, 3], "<u2").tofile(tmp_path / "oov.bin")
    with pytest.raises(DataError, match="holds id 450 >= the tokenizer's vocab_size 400"):
        check_tokens_match(str(tmp_path / "oov.bin"), sp, "uint16")
    # the sidecar names another model, another tokenizer, another dtype, or another length
    other = load_tokenizer("sentencepiece", train_sentencepiece(corpus[0], 420, str(tmp_path / "other")))
    with pytest.raises(DataError, match="made with another tokenizer model .*corpus_sp400.model"):
        check_tokens_match(str(out / "corpus_sp400.bin"), other, "uint16")
    with pytest.raises(DataError, match="made with the sentencepiece tokenizer .* but data.tokenizer=bytes"):
        check_tokens_match(str(out / "corpus_sp400.bin"), ByteTokenizer(), "uint16")
    with pytest.raises(DataError, match="holds uint16 ids .* but data.token_dtype=uint32"):
        check_tokens_match(str(out / "corpus_sp400.bin"), sp, "uint32")
    meta = pretokenize(corpus[0], sp, str(tmp_path / "cut.bin"))
    with open(tmp_path / "cut.bin", "r+b") as f:
        f.truncate(meta["num_tokens"] * 2 - 20)
    with pytest.raises(DataError, match="but its .json records"):
        check_tokens_match(str(tmp_path / "cut.bin"), sp, "uint16")
    with pytest.raises(DataError, match="does not exist"):
        check_tokens_match(str(tmp_path / "missing.bin"), sp, "uint16")


@pytest.mark.parametrize("kind, model, message", [
    ("wordpiece", "", "unknown data.tokenizer 'wordpiece'; valid: bytes, sentencepiece"),
    ("sentencepiece", "", "needs data.tokenizer_model"),
    ("sentencepiece", "/nonexistent/m.model", "does not exist"),
    ("sentencepiece", "TEXT", "is not a sentencepiece model"),
    ("sentencepiece", "EMPTY", "is empty, not a sentencepiece model"),
    ("bytes", "m.model", "but data.tokenizer=bytes"),
])
def test_load_tokenizer_errors(kind, model, message, corpus, tmp_path):
    (tmp_path / "empty.model").write_bytes(b"")
    model = {"TEXT": corpus[0], "EMPTY": str(tmp_path / "empty.model")}.get(model, model)
    with pytest.raises(DataError, match=message) as info:
        load_tokenizer(kind, model)
    assert "\n" not in str(info.value)


def test_byte_tokenizer_matches_the_byte_level_behaviour():
    bt = load_tokenizer("bytes", "")
    assert bt.vocab_size == 256 and bt.name == "bytes" and bt.describe().startswith("bytes")
    raw = np.random.default_rng(0).integers(0, 256, 1000)
    assert bt.decode(raw) == bytes(raw.astype(np.uint8).tolist()).decode("utf-8", errors="replace")
    assert bt.encode("héllo").tolist() == list("héllo".encode())


@pytest.mark.parametrize("flags, fragments", [
    (["--data.path=MISSING", "--vocab_size=300"], ["does not exist"]),
    (["--data.path=EMPTY", "--vocab_size=300"], ["is empty"]),
    (["--data.path=CORPUS", "--vocab_size=1"], ["--vocab_size must be in [2,"]),
    (["--data.path=CORPUS", "--vocab_size=100000"], ["too large", "use at most"]),
    (["--data.path=CORPUS", "--tokenizer_model=CORPUS", "--pretokenize"], ["is not a sentencepiece model"]),
    (["--data.path=CORPUS", "--vocab_size=300", "--out=CORPUS/sub/m"], ["cannot create the output directory"]),
    (["--data.path=CORPUS", "--tokenizer_model=CORPUS"], ["add --pretokenize"]),
    (["--data.path=CORPUS"], ["--vocab_size is required"]),
])
def test_cli_bad_input_is_one_line(flags, fragments, corpus, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    subst = {"MISSING": str(tmp_path / "missing.txt"), "EMPTY": str(tmp_path / "empty.txt"), "CORPUS": corpus[0]}
    for key, value in subst.items():
        flags = [flag.replace(key, value) for flag in flags]
    assert_one_line_error(run_cli("launch.tokenizer", *flags), *fragments)


def test_sampling_encodes_the_prompt_and_decodes_with_the_run_tokenizer(trained, monkeypatch):
    from archlab.train import sampling

    sp = load_tokenizer("sentencepiece", str(trained[0] / "corpus_sp400.model"))
    continuation = sp.encode(" the function returns None.")
    seen = {}

    def fake_generate_tokens(module, params, prompt_ids, length, **kwargs):
        seen.update(prompt_ids=np.asarray(prompt_ids), length=length, **kwargs)
        return continuation[:length]

    monkeypatch.setattr(sampling, "generate_tokens", fake_generate_tokens)
    text = sampling.generate_text(None, None, "def f():", len(continuation), tokenizer=sp, max_len=32, rng=None, top_k=5)
    assert seen["prompt_ids"].tolist() == sp.encode("def f():").tolist() and seen["top_k"] == 5
    assert text == " the function returns None."
    assert sampling.generate_text(None, None, "", 3, tokenizer=sp, max_len=32, rng=None) == sp.decode(continuation[:3])
    assert seen["prompt_ids"].tolist() == sp.encode("\n").tolist()  # an empty prompt starts from a newline
    # byte-level: the prompt's UTF-8 bytes in, the bytes decoded out (a split character is joined)
    monkeypatch.setattr(sampling, "generate_tokens", lambda *a, **k: np.frombuffer("é!".encode(), np.uint8).astype(np.int32))
    assert sampling.generate_text(None, None, "caf", 3, tokenizer=ByteTokenizer(), max_len=32, rng=None) == "é!"


def test_a_real_decoder_samples_sentencepiece_ids(trained):
    import jax
    import jax.numpy as jnp

    from archlab.arch import build_module
    from archlab.train.sampling import generate_text, generate_tokens

    sp = load_tokenizer("sentencepiece", str(trained[0] / "corpus_sp400.model"))
    sizes = dict(vocab_size=sp.vocab_size, num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=32)
    params = build_module("transformer", **sizes).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    decoder = build_module("transformer", decode=True, **sizes)
    kwargs = dict(max_len=32, rng=jax.random.PRNGKey(1), temperature=0.0)
    ids = generate_tokens(decoder, params, sp.encode("The "), 6, **kwargs)
    assert ids.shape == (6,) and ids.max() < sp.vocab_size
    assert generate_text(decoder, params, "The ", 6, tokenizer=sp, **kwargs) == sp.decode(np.concatenate([sp.encode("The "), ids]))[4:]


def test_launch_sample_refuses_a_missing_tokenizer_model(tmp_path):
    config = {"model_name": "transformer", "model": {"vocab_size": 400, "max_len": 32},
              "data": {"tokenizer": "sentencepiece", "tokenizer_model": str(tmp_path / "gone.model")}}
    (tmp_path / "config.json").write_text(json.dumps({"config": config}))
    proc = run_cli("launch.sample", f"--workdir={tmp_path}", "--length=5")
    assert_one_line_error(proc, "gone.model", "does not exist")
