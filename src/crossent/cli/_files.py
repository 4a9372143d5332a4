"""The files the commands write: never one the user gave, never one crossent did not write.

A command may create a new file, or replace (or, for ``bench --csv``, append to) a file that an
earlier run of the same command wrote, recognised by its content: a PNG's ``Software`` text
chunk, a CSV's header row, a Markdown file's title. Anything else is refused before any work is
done, with exit status 2. (``crossent compare`` writes a folder; its check is
:func:`crossent.compare.report.check_out_folder`.)
"""

from __future__ import annotations

import csv
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import typer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(path: Path) -> dict[str, str]:
    """The ``tEXt`` / ``zTXt`` chunks of a PNG file (``{}`` when it is not a PNG)."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if not data.startswith(PNG_SIGNATURE):
        return {}
    out: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, value = body.split(b"\0", 1)
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt" and b"\0" in body:
            key, rest = body.split(b"\0", 1)
            try:
                out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
            except zlib.error:
                pass
        elif kind == b"IEND":
            break
        pos += 12 + length
    return out


def csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return ""


def check_output(
    path: Path | None,
    *,
    option: str,
    what: str,
    ours: Callable[[Path], bool],
    others: dict[str, Path | None] | None = None,
    create_folder: bool = False,
) -> bool:
    """Refuse (exit 2) to write ``path`` if it is another option's file or an existing file
    that is not ``what`` (a file an earlier run wrote, as ``ours`` recognises). Returns whether
    ``path`` exists (and is one of ours, to be replaced or appended to). The file's folder
    must exist unless ``create_folder`` (the command creates it)."""
    if path is None:
        return False
    for name, other in (others or {}).items():
        if other is not None and _same(path, other):
            raise typer.BadParameter(
                f"{str(path)!r} is also given to {name}; nothing was written. Give {option} a "
                f"file of its own.",
                param_hint=option,
            )
    if path.is_dir():
        raise typer.BadParameter(
            f"{str(path)!r} is a folder; {option} needs a file name.", param_hint=option
        )
    if not create_folder and not path.resolve().parent.is_dir():
        raise typer.BadParameter(
            f"Could not write {str(path)!r}: the directory {str(path.parent)!r} does not exist.",
            param_hint=option,
        )
    if not path.exists():
        return False
    if not ours(path):
        raise typer.BadParameter(
            f"{str(path)!r} exists and is not {what}; it is left as it is and nothing was "
            f"written. Give {option} a new file name (or move that file).",
            param_hint=option,
        )
    return True


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False
