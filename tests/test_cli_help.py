"""Every ``edgekd`` subcommand's --help has a description, examples and its exit codes, and every example
parses. Generic over the parser's subcommands, so a command added later is held to the same rule."""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _examples(help_text: str) -> list[str]:
    """The command lines under 'examples:' (a description follows a command after two or more spaces)."""
    block = help_text.split("examples:", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if not line.startswith("  "):
            break
        command = re.split(r"\s{2,}", line.strip())[0]
        if command.startswith("edgekd "):
            lines.append(command)
    return lines


SUBCOMMANDS = sorted(_subcommands())


def test_the_parser_has_the_known_commands() -> None:
    assert {"run", "teacher", "distill", "qat", "export", "check", "gate", "doctor", "report", "compare"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_has_a_description_examples_and_exit_codes(name: str) -> None:
    sub = _subcommands()[name]
    text = sub.format_help()
    assert sub.description and len(sub.description.split()) >= 3, f"{name}: no description"
    assert sub.description.split()[0] in text
    examples = _examples(text) if "examples:" in text else []
    assert any(e.startswith(f"edgekd {name}") for e in examples), f"{name}: no example of 'edgekd {name} ...'"
    codes = re.search(r"exit codes?:(.*)", text, flags=re.S)
    assert codes and re.search(r"\b0\b", codes.group(1)) and re.search(r"\b2\b", codes.group(1)), \
        f"{name}: --help does not list its exit codes"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_example_in_help_parses(name: str) -> None:
    parser = build_parser()
    for example in _examples(_subcommands()[name].format_help()):
        try:
            parser.parse_args(shlex.split(example)[1:])
        except SystemExit as e:  # argparse exits 2 on a usage error
            pytest.fail(f"{name}: the example {example!r} does not parse (exit {e.code})")


def test_top_level_help_lists_every_command_and_exit_codes() -> None:
    proc = subprocess.run([sys.executable, "-m", "edgekd", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s", proc.stdout, flags=re.M), f"'edgekd --help' does not list {name}"
    assert "exit codes:" in proc.stdout
    for example in _examples(proc.stdout):
        build_parser().parse_args(shlex.split(example)[1:])
