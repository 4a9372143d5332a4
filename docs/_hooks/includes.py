"""MkDocs hook: include one section of a generated Markdown file (a ``crossent compare`` report).

A page line of the form

    <!-- crossent-include compare/NAME/report.md "Test metrics (mean ± sd over seeds)" -->

is replaced by the body of that section of the file (path relative to ``docs/``): the lines
after the heading whose text matches, up to the next heading of the same or a higher level.
An empty heading (``""``) selects the text between the title and the first sub-heading,
``"*"`` everything after the title. The file is committed as the command wrote it, so the
page quotes the run instead of copying numbers by hand; a missing file or heading fails the
build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

INCLUDE = re.compile(r'^<!-- crossent-include (?P<path>[\w./-]+) "(?P<heading>[^"]*)" -->$', re.M)
HEADING = re.compile(r"^(?P<level>#{1,6}) (?P<text>.*?)\s*$")


def section(text: str, heading: str) -> str:
    """The body of the section titled ``heading`` ("" for the text under the title)."""
    lines = text.split("\n")
    if heading == "*":  # everything after the title
        for i, line in enumerate(lines):
            if line.startswith("# "):
                return "\n".join(lines[i + 1 :]).strip("\n")
        raise ValueError("No title (# heading) in the included file.")
    start, level = None, 0
    for i, line in enumerate(lines):
        match = HEADING.match(line)
        if not match:
            continue
        if heading == "" and len(match["level"]) == 1:
            start, level = i + 1, 1
            break
        if match["text"] == heading:
            start, level = i + 1, len(match["level"])
            break
    if start is None:
        raise ValueError(f"No heading {heading!r} in the included file.")
    end = len(lines)
    for j in range(start, len(lines)):
        match = HEADING.match(lines[j])
        if match and (heading == "" or len(match["level"]) <= level):
            end = j
            break
    return "\n".join(lines[start:end]).strip("\n")


def on_page_markdown(markdown: str, *, page: Any, config: Any, **kwargs: Any) -> str:
    docs = Path(config["docs_dir"])

    def include(match: re.Match) -> str:
        path = docs / match["path"]
        if not path.is_file():
            raise FileNotFoundError(f"{page.file.src_uri}: no file {match['path']} to include")
        return section(path.read_text(encoding="utf-8"), match["heading"])

    return INCLUDE.sub(include, markdown)
