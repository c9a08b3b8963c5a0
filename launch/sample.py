"""python -m launch.sample --workdir=DIR --prompt="def " --length=200 [--temperature=0.8] [--top_k=0] [--top_p=0]

Reads the workdir only (a read-only mount or another user's run works): the text goes to stdout,
and nothing is written, created or renamed in DIR. The prompt is encoded and the output decoded
with the tokenizer the run trained with (its config.json: data.tokenizer, data.tokenizer_model).
"""

from __future__ import annotations

import sys

from archlab.launch.cli import OneLineParser, fail, quiet_logs


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m launch.sample", description="Generate text from a trained LM run's latest checkpoint (KV-cached decoding).")
    parser.add_argument("--workdir", required=True, help="a run directory written by launch.train")
    parser.add_argument("--prompt", default="The ", help="text to continue")
    parser.add_argument("--length", type=int, default=200, help="tokens to generate (bytes for a byte-level model)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    parser.add_argument("--top_p", type=float, default=0.0, help="nucleus sampling: the likeliest tokens holding this probability (0 or 1 = all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.length < 1:
        fail(f"--length must be >= 1, got {args.length}")
    if args.temperature < 0:
        fail(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        fail(f"--top_k must be >= 0 (0 = all tokens), got {args.top_k}")
    if not 0.0 <= args.top_p <= 1.0:  # also refuses nan
        fail(f"--top_p must be in [0, 1] (0 or 1 = all tokens), got {args.top_p}")

    quiet_logs()
    import jax

    from archlab.arch import get_model_spec
    from archlab.train.checkpoint import CheckpointError
    from archlab.train.data import DataError
    from archlab.train.data.tokenizer import tokenizer_for_config
    from archlab.train.sampling import generate_text
    from archlab.train.workdir import load_run_info, restore_params

    try:
        config = load_run_info(args.workdir)["config"]
        spec = get_model_spec(config.model_name)
        if spec.task != "lm":
            fail(f"run in {args.workdir!r} is a {config.model_name!r} model; sampling text needs a language model")
        tokenizer = tokenizer_for_config(config.data)
        vocab_size = config.model.get("vocab_size", 256)
        if tokenizer.vocab_size > vocab_size:
            fail(f"the run's tokenizer has {tokenizer.vocab_size} ids but its model.vocab_size={vocab_size}")
        if args.top_k > vocab_size:
            fail(f"--top_k must be in [0, {vocab_size}] (the model's vocabulary), got {args.top_k}")
        config, params, _, step = restore_params(args.workdir, notify=lambda m: print(m, file=sys.stderr))
        text = generate_text(
            spec.make_module(config.model, decode=True), params, args.prompt, args.length, tokenizer=tokenizer,
            max_len=config.model.max_len, rng=jax.random.PRNGKey(args.seed), temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p,
        )
    except CheckpointError as e:
        fail(str(e))
    except DataError as e:
        fail(f"cannot read this run's tokenizer: {e}")
    except ValueError as e:
        fail(str(e))
    print(f"# {config.model_name} at step {step} from {args.workdir}", file=sys.stderr)
    print(args.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
