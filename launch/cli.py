"""Shared CLI plumbing: ``--config=FILE[:arg]``, ``--config.SECTION.FIELD=VALUE`` overrides and one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with every flag's default (unless its help already names it) and the epilog as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2; its ``--help`` shows defaults.

    Its program name (usage and error lines) is ``command_name`` when set (see ``invoked_as``),
    else the ``prog`` given (``python -m launch.train``)."""

    command_name: str | None = None

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        if OneLineParser.command_name is not None:
            kwargs["prog"] = OneLineParser.command_name
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


@contextlib.contextmanager
def invoked_as(name: str):
    """Parsers made inside name their program ``name`` (``archlab nas``: archlab/__main__.py running a command)."""
    previous, OneLineParser.command_name = OneLineParser.command_name, name
    try:
        yield
    finally:
        OneLineParser.command_name = previous


def split_config_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates ``--config.a.b=v`` / ``--config.a.b v`` from the other flags."""
    rest, overrides = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, sep, value = arg[len("--config.") :].partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    fail(f"--config.{key} needs a value (--config.{key}=VALUE)")
                value = argv[i + 1]
                i += 1
            overrides[key] = value
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


CONFIG_FILE_HELP = ("a config file, configs/NAME.py[:arg]: its get_config(arg) is the run's config (then --model is optional); "
                    "--config.SECTION.FIELD=VALUE overrides apply on top")


def base_config_from_flags(model: str | None, config_file: str | None):
    """The config ``--config=FILE[:arg]`` loads (refused when ``--model`` names another model), else
    ``--model``'s default; bad input is one line and exit 2."""
    from archlab.arch import UnknownModelError
    from archlab.train.config import ConfigError, get_config, load_config_file

    try:
        config = load_config_file(config_file) if config_file is not None else get_config(model)
    except (UnknownModelError, ConfigError) as e:
        fail(str(e))
    if config_file is not None and model and model != config.model_name:
        fail(f"--model={model} but --config={config_file} is a {config.model_name!r} config; drop --model, or give a config file for {model}")
    return config


def default_workdir(model: str, config_file: str | None) -> str:
    """runs/<model>, or runs/<file stem>[_<arg>] for a config file (so two presets never share one)."""
    if config_file is None:
        return f"runs/{model}"
    from archlab.train.config import split_path_and_arg

    path, arg = split_path_and_arg(config_file)
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"runs/{stem}_{arg}" if arg else f"runs/{stem}"


def fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def check_platform() -> None:
    """One line and exit 2 when JAX_PLATFORMS asks for an accelerator whose jax plugin is missing
    (jax itself fails later with a bare AssertionError)."""
    from archlab.train.platforms import missing_platform_plugin

    problem = missing_platform_plugin()
    if problem:
        fail(problem)


def quiet_logs() -> None:
    """Keeps orbax/absl/jax INFO chatter off the console."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass
    for name in ("absl", "orbax", "jax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # orbax reads a damaged checkpoint through asyncio; its shutdown logs every cancelled read
    # at ERROR. The loader reports the damage itself in one line.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    # jax2onnx's IR serializer warns about every untyped shape constant it skips (dozens per
    # transformer or int8 export); the exported file is checked by onnx.checker and parity instead.
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)


def describe_config(config, prefix: str = "") -> list[str]:
    """``section.field=value`` lines for ``--help``."""
    lines = []
    for key, value in config.items():
        if hasattr(value, "items"):
            lines += describe_config(value, f"{prefix}{key}.")
        else:
            lines.append(f"  --config.{prefix}{key}={value!r}" if isinstance(value, str) else f"  --config.{prefix}{key}={value}")
    return lines
