"""What the commands share: consoles, loading tensors with friendly errors, JSON output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import typer
from rich.console import Console

from crossent._io import jsonable, load_tensor

FLOAT_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def console() -> Console:
    # Created per call so that the test runner's captured stdout is the one written to.
    return Console(highlight=False, soft_wrap=False)


def emit_json(obj: Any) -> None:
    typer.echo(json.dumps(jsonable(obj), indent=2, allow_nan=False))


@contextmanager
def user_errors(param_hint: str | None = None) -> Iterator[None]:
    """Turn the library's ValueError / TypeError (bad value, bad shape, unknown loss) into a
    usage error: one clear line on stderr, exit status 2, no traceback."""
    try:
        yield
    except (ValueError, TypeError) as e:
        # typer.BadParameter, not click's: recent typer ships its own copy of click.
        raise typer.BadParameter(str(e), param_hint=param_hint) from None


def load(source: str, *, name: str, param_hint: str) -> torch.Tensor:
    with user_errors(param_hint):
        return load_tensor(source, name=name)


def as_float(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Model outputs as floats: inline integers (``[[1, -2]]``) are read as int64 by default."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)
