"""python -m launch.tokenizer [--data.path=FILE] --vocab_size=N [--out=DIR_OR_PREFIX] [--model_type=bpe|unigram]
                             [--pretokenize[=OUT.bin]] [--tokenizer_model=EXISTING.model] [--token_dtype=uint16|uint32]

Trains a sentencepiece tokenizer on a text file (default: the embedded pydoc_data.topics corpus),
offline (PREFIX.model + PREFIX.vocab), and with --pretokenize also writes the text as a token
memmap (PREFIX.bin + PREFIX.bin.json). Prints the launch.train flags that use them. With
--tokenizer_model it only pre-tokenises, with that model.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

from archlab.launch.cli import OneLineParser, fail

MAX_VOCAB = 2**31 - 1  # token ids are int32


def _parse(argv: list[str]):
    parser = OneLineParser(prog="python -m launch.tokenizer",
                           description="Train a sentencepiece tokenizer on a text file and/or pre-tokenise it to a token memmap.")
    parser.add_argument("--data.path", dest="data_path", default="", metavar="FILE",
                        help="the UTF-8 text file to train on / tokenise (default: the embedded pydoc_data.topics corpus)")
    parser.add_argument("--vocab_size", type=int, help="pieces in the trained model (e.g. 512 for ~0.5 MB of text)")
    parser.add_argument("--out", default="", help="output prefix, or a directory (default: next to the text, NAME_spN; the embedded corpus: ./pydoc_topics_spN)")
    parser.add_argument("--model_type", choices=("bpe", "unigram"), default="bpe")
    parser.add_argument("--character_coverage", type=float, default=1.0, help="fraction of characters given their own piece")
    parser.add_argument("--pretokenize", nargs="?", const="", default=None, metavar="OUT.bin",
                        help="also write the text's token ids (default PREFIX.bin)")
    parser.add_argument("--tokenizer_model", default="", help="pre-tokenise with this existing .model instead of training one")
    parser.add_argument("--token_dtype", choices=("uint16", "uint32"), default=None,
                        help="the .bin's id type (default uint16, uint32 when the vocabulary needs it)")
    return parser.parse_args(argv)


def _prefix(out: str, default_dir: str, default_name: str) -> str:
    """--out as a prefix: a directory (existing, or written with a trailing slash) gets the default name."""
    if not out:
        return os.path.join(default_dir, default_name)
    if out.endswith(os.sep) or os.path.isdir(out):
        return os.path.join(out, default_name)
    return out[: -len(".model")] if out.endswith(".model") else out


def _check_writable(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        fail(f"cannot create the output directory {directory!r}: {e.strerror}")
    if not os.access(directory, os.W_OK):
        fail(f"the output directory {directory!r} is not writable")


@contextlib.contextmanager
def _text_file(path: str):
    """``path``, or the embedded corpus written to a temporary file for the length of the block."""
    if path:
        yield path
        return
    from archlab.train.data.text import embedded_text

    with tempfile.TemporaryDirectory() as directory:
        embedded = os.path.join(directory, "pydoc_topics.txt")
        with open(embedded, "w", encoding="utf-8", newline="") as f:
            f.write(embedded_text())
        yield embedded


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    text_dir, text_name = os.path.split(os.path.abspath(args.data_path)) if args.data_path else (".", "pydoc_topics.txt")
    stem = os.path.splitext(text_name)[0]
    if args.tokenizer_model:
        if args.pretokenize is None:
            fail("--tokenizer_model pre-tokenises with an existing model; add --pretokenize (or leave it out to train one)")
        if args.vocab_size is not None:
            fail("--vocab_size is read only when training a model; with --tokenizer_model the model's own size is used")
        model_stem = os.path.splitext(os.path.basename(args.tokenizer_model))[0]
        prefix = _prefix(args.out, text_dir, f"{stem}.{model_stem}")
    else:
        if args.vocab_size is None:
            fail("--vocab_size is required to train a tokenizer (or give --tokenizer_model=EXISTING.model --pretokenize)")
        if not 2 <= args.vocab_size <= MAX_VOCAB:
            fail(f"--vocab_size must be in [2, {MAX_VOCAB}], got {args.vocab_size}")
        if args.vocab_size > 65536 and args.token_dtype == "uint16" and args.pretokenize is not None:
            fail(f"--vocab_size={args.vocab_size} does not fit --token_dtype=uint16 (at most 65536); use uint32")
        prefix = _prefix(args.out, text_dir, f"{stem}_sp{args.vocab_size}")
    if args.data_path and not os.path.isfile(args.data_path):
        fail(f"--data.path {args.data_path!r} " + ("is not a file" if os.path.exists(args.data_path) else "does not exist"))
    if args.data_path and os.path.getsize(args.data_path) == 0:
        fail(f"--data.path {args.data_path!r} is empty")
    bin_path = (args.pretokenize or prefix + ".bin") if args.pretokenize is not None else ""
    if not args.tokenizer_model:
        _check_writable(prefix)
    if bin_path:
        _check_writable(bin_path)

    from archlab.train.data import DataError
    from archlab.train.data.tokenizer import load_tokenizer, pretokenize, train_sentencepiece

    source = os.path.abspath(args.data_path) if args.data_path else "pydoc_data.topics (stdlib)"
    data_flag = f" --config.data.path={os.path.abspath(args.data_path)}" if args.data_path else ""
    try:
        with _text_file(args.data_path) as text_path:
            if args.tokenizer_model:
                tokenizer = load_tokenizer("sentencepiece", args.tokenizer_model)
            else:
                model_path = train_sentencepiece(text_path, args.vocab_size, prefix, model_type=args.model_type,
                                                 character_coverage=args.character_coverage)
                tokenizer = load_tokenizer("sentencepiece", model_path)
                print(f"wrote {tokenizer.model_path} (+ .vocab): sentencepiece {args.model_type}, "
                      f"{tokenizer.vocab_size} pieces, trained on {source}")
            flags = (f"python -m launch.train --model=transformer --config.data.tokenizer=sentencepiece "
                     f"--config.data.tokenizer_model={tokenizer.model_path} --config.model.vocab_size={tokenizer.vocab_size}")
            if not args.tokenizer_model:
                print(f"train on the text with:\n  {flags}{data_flag}")
            if not bin_path:
                return 0
            dtype = args.token_dtype or ("uint16" if tokenizer.vocab_size <= 65536 else "uint32")
            meta = pretokenize(text_path, tokenizer, bin_path, dtype, source=source)
            size = os.path.getsize(text_path)
    except DataError as e:
        # the embedded corpus's temporary file is no name a user can act on
        fail(str(e) if args.data_path else re.sub(r"'[^']*pydoc_topics\.txt'", "pydoc_data.topics (the embedded corpus)", str(e)))
    print(f"wrote {os.path.abspath(bin_path)} (+ .json): {meta['num_tokens']:,} {dtype} tokens, "
          f"{size / meta['num_tokens']:.2f} bytes of text per token")
    dtype_flag = f" --config.data.token_dtype={dtype}" if dtype != "uint16" else ""
    print(f"train on the tokens with:\n  {flags} --config.data.format=tokens --config.data.path={os.path.abspath(bin_path)}{dtype_flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
