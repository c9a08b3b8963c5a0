"""``archlab COMMAND`` / ``python -m archlab COMMAND``: the command list reads each launch module's
description, and a command's usage and error lines name it as the user ran it."""

import pytest

from archlab.__main__ import COMMANDS, main, summary, usage
from archlab.launch.cli import OneLineParser
from conftest import assert_one_line_error, run_cli


def test_every_command_is_listed_with_the_first_clause_of_its_parser_description():
    for command in COMMANDS:
        assert summary(command) and "\n" not in summary(command), command
    assert summary("sample") == "Generate text from a trained LM run's latest checkpoint (KV-cached decoding)"
    assert summary("quantize") == "Post-training int8 quantisation of a trained float run (train/ptq.py)"
    assert usage("archlab").startswith("usage: archlab COMMAND") and all(f"  {c} " in usage() for c in COMMANDS)


def test_errors_name_the_program_as_invoked():
    assert_one_line_error(run_cli("archlab", "nas", "--strategy=x"), "python -m archlab nas: error:", "'x'")
    assert_one_line_error(run_cli("launch.nas", "--strategy=x"), "python -m launch.nas: error:", "'x'")
    assert_one_line_error(run_cli("archlab", "trian"), "'trian'", "(python -m archlab COMMAND --help)")


def test_the_console_script_names_itself_and_leaves_other_parsers_alone(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", "--length=x"])
    assert info.value.code == 2 and capsys.readouterr().err.startswith("archlab sample: error: argument --length")
    assert OneLineParser.command_name is None and OneLineParser(prog="python -m launch.sample").prog == "python -m launch.sample"
