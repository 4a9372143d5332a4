"""Running the ``crossent`` command in-process, and small helpers for its tests."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from typer.testing import CliRunner

from crossent.cli import app
from crossent.registry import LOSSES

# Wide enough that rich never wraps a table row or a message (tests read whole lines).
RUNNER = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})

HAS_SOFTMAX = "ce" in LOSSES


def invoke(*args: str):
    """Run ``crossent ARGS``; the result has ``exit_code``, ``stdout``, ``stderr``, ``output``."""
    return RUNNER.invoke(app, [str(a) for a in args])


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise AssertionError(f"{path} is not a PNG")
    return struct.unpack(">II", data[16:24])
