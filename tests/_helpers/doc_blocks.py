"""Run the Python code blocks of the documentation pages, so that documented code cannot rot.

A page's ```` ```python ```` blocks run in order in one namespace (like a notebook), from the
repository root. Two conventions, both invisible in the rendered page:

* a block followed (blank lines only in between) by a ```` ```text title="Output" ```` block
  must print exactly that text (trailing whitespace ignored);
* a block preceded by the line ``<!-- docs-test: skip -->`` is not run (code for other
  libraries, ``torchrun`` launches). Every skip is visible in the page source.

Fences may be indented (inside admonitions or content tabs); the indentation is removed.
"""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

SKIP_MARKER = "<!-- docs-test: skip -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^`]*)$")


@dataclass
class Block:
    language: str
    info: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: bool
    output: str | None = None  # the expected output, for a python block followed by one


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown page, with outputs attached to their python blocks."""
    lines = text.split("\n")
    blocks: list[Block] = []
    previous_nonblank = ""
    last_block_end = -1
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            if lines[i].strip():
                previous_nonblank = lines[i].strip()
            i += 1
            continue
        indent, ticks, info = match.group("indent"), match.group("ticks"), match.group("info")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].startswith(indent) and lines[i].strip() == ticks):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"Unclosed code fence opened at line {start + 1}.")
        language = info.strip().split(" ", 1)[0].strip("{}.").lower()
        code = textwrap.dedent("\n".join(line for line in body))
        block = Block(
            language=language,
            info=info.strip(),
            code=code,
            line=start + 1,
            skip=previous_nonblank == SKIP_MARKER,
        )
        is_output = language == "text" and 'title="Output"' in info
        between = lines[last_block_end + 1 : start] if last_block_end >= 0 else ["x"]
        if (
            is_output
            and blocks
            and blocks[-1].language == "python"
            and not any(line.strip() for line in between)
        ):
            blocks[-1].output = code
        else:
            blocks.append(block)
        previous_nonblank = ticks
        last_block_end = i
        i += 1
    return blocks


def run_page(path: Path, *, check: bool = True) -> list[tuple[Block, str]]:
    """Run a page's python blocks; returns each run block with what it printed.

    Raises AssertionError naming the page and line when a block fails or prints something
    other than its documented output.
    """
    namespace: dict = {"__name__": "__docs__"}
    results = []
    for block in parse_blocks(path.read_text(encoding="utf-8")):
        if block.language != "python" or block.skip:
            continue
        stdout = io.StringIO()
        where = f"{path.name}:{block.line}"
        try:
            with contextlib.redirect_stdout(stdout):
                exec(compile(block.code, where, "exec"), namespace)
        except Exception as exc:
            raise AssertionError(
                f"The code block at {where} raised {type(exc).__name__}: {exc}"
            ) from exc
        printed = stdout.getvalue()
        if check and block.output is not None:
            expected = _normalise(block.output)
            actual = _normalise(printed)
            if actual != expected:
                raise AssertionError(
                    f"The code block at {where} printed\n{actual}\n"
                    f"but the page documents\n{expected}"
                )
        results.append((block, printed))
    return results


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))
