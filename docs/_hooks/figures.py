"""MkDocs hook: figures made by ``crossent curves`` at build time, from the command on the page.

A page line of the form

    <!-- crossent-figure figures/NAME.png: crossent curves --loss bce --loss focal -->

makes the hook run that command (in-process, through the CLI itself, with ``--out`` pointing
into a temporary folder), add the PNG to the site at ``figures/NAME.png``, and replace the line
with the image and a caption stating the exact command. The figures therefore always show what
the code on the branch computes; nothing is drawn by hand or committed.
"""

from __future__ import annotations

import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

FIGURE = re.compile(
    r"^<!-- crossent-figure (?P<path>figures/[\w.-]+\.png): (?P<command>crossent [^\n]*?) -->$",
    re.M,
)
_TMP: tempfile.TemporaryDirectory | None = None


def _app() -> Any:
    # See cli_reference._app: import crossent from src/ when it is not installed.
    src = str(Path(__file__).resolve().parents[2] / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from crossent.cli import app

    return app


def run_figure_command(command: str, out: Path) -> None:
    """Run ``crossent ...`` with ``--out out``; raise with the CLI's output if it fails."""
    from typer.testing import CliRunner

    args = shlex.split(command)[1:]
    if "--out" in args or "-o" in args:
        raise ValueError(f"Leave --out to the hook: {command!r}")
    result = CliRunner().invoke(_app(), [*args, "--out", str(out)], prog_name="crossent")
    if result.exit_code != 0 or not out.is_file():
        raise RuntimeError(
            f"`{command}` exited with {result.exit_code} and wrote no figure:\n{result.output}"
            + (f"\n{result.exception!r}" if result.exception else "")
        )


def on_files(files: Any, *, config: Any) -> Any:
    global _TMP
    _TMP = tempfile.TemporaryDirectory(prefix="crossent-figures-")
    made: dict[str, str] = {}
    for file in list(files.documentation_pages()):
        text = Path(file.abs_src_path).read_text(encoding="utf-8")
        for match in FIGURE.finditer(text):
            path, command = match["path"], match["command"]
            if path in made:
                if made[path] != command:
                    raise ValueError(f"{path} is made by two different commands.")
                continue
            out = Path(_TMP.name) / path
            out.parent.mkdir(parents=True, exist_ok=True)
            run_figure_command(command, out)
            files.append(File.generated(config, path, abs_src_path=str(out)))
            made[path] = command
    return files


def on_page_markdown(markdown: str, *, page: Any, **kwargs: Any) -> str:
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth

    def figure(match: re.Match) -> str:
        path, command = match["path"], match["command"]
        return (
            f"![{command}]({prefix}{path})\n\n"
            f"*Generated when the site is built, by `{command} --out {Path(path).name}`.*"
        )

    return FIGURE.sub(figure, markdown)


def on_post_build(config: Any) -> None:
    global _TMP
    if _TMP is not None:
        _TMP.cleanup()
        _TMP = None
