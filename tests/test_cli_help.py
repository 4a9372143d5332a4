"""Every command's --help reads whole at 80 columns, and says what the README promises."""

from __future__ import annotations

import inspect
import re

import pytest
import typer
from typer.testing import CliRunner

from crossent.cli import app

ROOT = typer.main.get_command(app)
COMMANDS = sorted(ROOT.commands)


def _help(*args: str, width: int = 80) -> str:
    env = {"COLUMNS": str(width), "TERMINAL_WIDTH": str(width), "NO_COLOR": "1", "TERM": "dumb"}
    result = CliRunner(env=env).invoke(app, [*args, "--help"], prog_name="crossent")
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_listed():
    assert COMMANDS == ["bench", "compare", "curves", "demo", "doctor", "explain"]


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_paragraphs_are_not_broken_mid_sentence(name):
    command = ROOT.commands[name] if name else ROOT
    # Typer keeps a line break inside a paragraph as written: each paragraph is one line.
    paragraphs = inspect.cleandoc(command.help or "").split("\n\n")
    for paragraph in paragraphs:
        assert "\n" not in paragraph, paragraph
    assert len(paragraphs[0]) <= 90, paragraphs[0]  # the summary in the command list
    # Epilog lines are kept as written: none may wrap at 80 columns (78 inside the padding).
    for line in (command.epilog or "").splitlines():
        assert len(line) <= 76, line
    text = _help(*([name] if name else []))
    assert "…" not in text  # rich cuts a cell it cannot wrap with an ellipsis
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_json(name):
    options = {opt for p in ROOT.commands[name].params for opt in p.opts}
    assert "--json" in options
    assert "--json" in _help(name, width=200)


def test_no_words_of_our_own_process_in_the_help():
    texts = [_help(width=200), *(_help(name, width=200) for name in COMMANDS)]
    for text in texts:
        assert not re.search(r"(?i)\bissues?\b|\bticket|\bthe brief\b", text), text
