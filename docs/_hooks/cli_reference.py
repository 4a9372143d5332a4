"""MkDocs hook: the command-line reference is the CLI's own ``--help``, captured at build time.

A page containing the marker line ``<!-- crossent-cli-help -->`` gets, in its place, one
section per command of ``crossent`` (the root, then every sub-command, recursively), each
holding the text that ``crossent <command> --help`` prints. Nothing is copied by hand, so the
reference cannot drift from the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- crossent-cli-help -->"
WIDTH = 100


def _app() -> Any:
    # `mkdocs build` in a checkout that has not installed crossent imports it from src/ (at call
    # time: griffe's inspection restores sys.path after importing, so an early insert is lost).
    src = str(Path(__file__).resolve().parents[2] / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from crossent.cli import app

    return app


def help_text(args: list[str]) -> str:
    """What ``crossent *args --help`` prints, at a fixed width and without colour."""
    from typer.testing import CliRunner

    app = _app()

    result = CliRunner().invoke(
        app,
        [*args, "--help"],
        prog_name="crossent",
        env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": str(WIDTH), "NO_COLOR": "1"},
        color=False,
    )
    if result.exit_code != 0:
        raise RuntimeError(
            f"`crossent {' '.join(args)} --help` exited with {result.exit_code}:\n{result.output}"
        )
    lines = [line.rstrip() for line in result.output.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def commands() -> list[list[str]]:
    """Every visible command path: ``[]`` (the root), ``["demo"]``, ``["group", "sub"]``..."""
    import typer

    root = typer.main.get_command(_app())
    paths: list[list[str]] = []

    # Duck-typed: typer vendors its own copy of click, so isinstance(click.Group) would miss it.
    def visit(command: Any, path: list[str]) -> None:
        paths.append(path)
        if hasattr(command, "list_commands"):
            ctx = command.context_class(command, info_name="crossent")
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not getattr(sub, "hidden", False):
                    visit(sub, [*path, name])

    visit(root, [])
    return paths


def render() -> str:
    sections = []
    for path in commands():
        title = " ".join(["crossent", *path])
        sections.append(f"## `{title}`\n\n```text\n{help_text(path)}\n```\n")
    return "\n".join(sections)


def on_page_markdown(markdown: str, *, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
