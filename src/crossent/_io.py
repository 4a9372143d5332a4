"""Tensors for the tools: inline text, files (.npy, .pt, .csv) and seeded random inputs; JSON.

Shared by ``explain`` and ``doctor`` (and their commands). Files are opened read-only and never
written. Every error is a ``ValueError`` that names the argument, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FILE_SUFFIXES",
    "jsonable",
    "load_tensor",
    "parse_shape",
    "parse_tensor_text",
    "random_tensor",
]

FILE_SUFFIXES = (".npy", ".pt", ".pth", ".csv")

_TOKEN = re.compile(
    r"\s*(?:(?P<open>[\[(])|(?P<close>[\])])|(?P<comma>,)"
    r"|(?P<number>[+-]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))"
    r"|(?P<bool>true|false))",
    re.IGNORECASE,
)


def _tokens(text: str, name: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            rest = text[pos:].strip()
            if not rest:
                break
            raise ValueError(
                f"Expected `{name}` to be a nested list of numbers such as "
                f'"[[0.2, 0.7], [0.9, 0.1]]", but could not read {rest[:20]!r} '
                f"(position {pos} of {text!r})."
            )
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def parse_tensor_text(text: str, *, name: str = "input") -> torch.Tensor:
    """A tensor from JSON-ish text: nested lists of numbers, commas or spaces between them.

    Integers give an int64 tensor, anything with a decimal point, exponent, ``nan`` or ``inf``
    a float32 one (as ``torch.tensor`` does); ``true``/``false`` give bool. A flat list needs no
    brackets (``"0, 1, 1"``).

    >>> parse_tensor_text("[[0.88, 0.92], [0.96, 0.39]]").shape
    torch.Size([2, 2])
    >>> parse_tensor_text("[0 2 1]")
    tensor([0, 2, 1])
    >>> parse_tensor_text("[1, nan, -inf]")
    tensor([1., nan, -inf])
    """
    tokens = _tokens(text, name)
    if not tokens:
        raise ValueError(f"Expected `{name}` to hold numbers, but got an empty string.")
    if tokens[0][0] != "open":
        tokens = [("open", "["), *tokens, ("close", "]")]
    pos = 0

    def parse() -> Any:
        nonlocal pos
        kind, value = tokens[pos]
        pos += 1
        if kind == "number":
            low = value.lower()
            if re.fullmatch(r"[+-]?\d+", value):
                return int(value)
            return float(low.replace("infinity", "inf"))
        if kind == "bool":
            return value.lower() == "true"
        if kind != "open":
            raise ValueError(
                f"Expected `{name}` to be a nested list of numbers, but found {value!r} "
                f"where a number or '[' belongs."
            )
        items = []
        while True:
            if pos >= len(tokens):
                raise ValueError(f"Expected `{name}` to close every '[', but got {text!r}.")
            kind, value = tokens[pos]
            if kind == "close":
                pos += 1
                return items
            if kind == "comma":
                pos += 1
                continue
            items.append(parse())

    data = parse()
    if pos != len(tokens):
        raise ValueError(f"Unexpected text after the closing bracket in `{name}`: {text!r}.")
    shape = _shape_of(data, name)
    flat = list(_flatten(data))
    if any(isinstance(v, bool) for v in flat):
        if not all(isinstance(v, bool) for v in flat):
            raise ValueError(
                f"Expected `{name}` to mix no booleans with numbers, but got {text!r}."
            )
        dtype = torch.bool
    elif all(isinstance(v, int) for v in flat):
        dtype = torch.int64
    else:
        dtype = torch.float32
    return torch.tensor(flat, dtype=dtype).reshape(shape)


def _shape_of(data: Any, name: str) -> tuple[int, ...]:
    if not isinstance(data, list):
        return ()
    if not data:
        return (0,)
    shapes = {_shape_of(item, name) for item in data}
    if len(shapes) != 1:
        raise ValueError(
            f"Expected `{name}` to be rectangular (every row the same length), but its rows "
            f"have shapes {sorted(shapes)}."
        )
    return (len(data), *shapes.pop())


def _flatten(data: Any):
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def looks_inline(text: str) -> bool:
    """Whether ``text`` is inline numbers rather than a file name."""
    stripped = text.strip()
    if not stripped:
        return True
    if stripped[0] in "[(":
        return True
    return all(
        re.fullmatch(r"[+-]?(inf|nan|\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", t, re.IGNORECASE)
        for t in re.split(r"[\s,]+", stripped)
        if t
    )


def _read_csv(path: Path, name: str) -> torch.Tensor:
    rows: list[list[str]] = []
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            rows.append([c.strip() for c in re.split(r"[,;\t]", line)])
    if rows and not all(looks_inline(c) for c in rows[0]):
        rows = rows[1:]  # a header line
    if not rows:
        raise ValueError(f"Expected `{name}` file {str(path)!r} to hold numbers, but it is empty.")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(
            f"Expected every row of `{name}` file {str(path)!r} to have the same number of "
            f"columns, but got {sorted(widths)}."
        )
    text = "[" + ",".join("[" + ",".join(r) + "]" for r in rows) + "]"
    tensor = parse_tensor_text(text, name=f"{name} ({path.name})")
    # One column is a vector (N,): rows are samples. Keep (N, 1) in .npy or .pt if you need it.
    return tensor[:, 0] if tensor.shape[1] == 1 else tensor


def load_tensor(source: str | Path | torch.Tensor | np.ndarray, *, name: str) -> torch.Tensor:
    """A tensor from inline text, a file (.npy, .pt/.pth, .csv), an array or a tensor.

    Files are opened read-only; ``.pt`` files are loaded with ``weights_only=True`` onto the CPU
    and must hold a single tensor. A CSV has one sample per line (a header line is skipped); a
    single column gives a vector of shape ``(N,)``.

    >>> load_tensor("[[0, 1], [1, 0]]", name="target").dtype
    torch.int64
    """
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, np.ndarray):
        return torch.from_numpy(source.copy())
    text = str(source)
    if not isinstance(source, Path) and looks_inline(text):
        return parse_tensor_text(text, name=name)
    path = Path(text).expanduser()
    if not path.exists():
        raise ValueError(
            f'Expected `{name}` to be a file or inline numbers such as "[[0.2, 0.8]]", but '
            f"{text!r} does not exist."
        )
    if path.is_dir():
        raise ValueError(f"Expected `{name}` to be a file, but {text!r} is a directory.")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(
            f"Expected `{name}` to be a {', '.join(FILE_SUFFIXES)} file, but got {text!r}."
        )
    try:
        if suffix == ".npy":
            with path.open("rb") as f:
                array = np.load(f, allow_pickle=False)
            if array.dtype.kind not in "biuf":
                raise ValueError(f"it holds dtype {array.dtype}")
            return torch.from_numpy(np.array(array))
        if suffix in (".pt", ".pth"):
            with path.open("rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
            if not isinstance(obj, torch.Tensor):
                raise ValueError(f"it holds a {type(obj).__name__}, not a single tensor")
            return obj.detach()
        return _read_csv(path, name)
    except ValueError as e:
        if str(e).startswith("Expected"):
            raise
        raise ValueError(f"Could not read `{name}` from {text!r}: {e}.") from None
    except Exception as e:  # unpickling / format errors of numpy and torch
        raise ValueError(
            f"Could not read `{name}` from {text!r}: {type(e).__name__}: {e}".rstrip(".") + "."
        ) from None


def parse_shape(text: str, *, name: str = "shape") -> tuple[int, ...]:
    """``"2x3"`` (or ``"2,3"``, ``"2 3"``) -> ``(2, 3)``.

    >>> parse_shape("2x3")
    (2, 3)
    """
    parts = [p for p in re.split(r"[x×*,\s]+", text.strip().lower()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f'Expected `{name}` to be sizes such as "2x3", but got {text!r}.')
    shape = tuple(int(p) for p in parts)
    if any(s == 0 for s in shape):
        raise ValueError(f"Expected every size in `{name}` to be >= 1, but got {text!r}.")
    if math.prod(shape) > 10_000_000:
        raise ValueError(
            f"Expected `{name}` to hold at most 10,000,000 elements, but got {text!r}."
        )
    return shape


def random_tensor(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Exactly ``torch.manual_seed(seed); torch.rand(shape)``, without touching the global RNG.

    >>> _ = torch.manual_seed(42)
    >>> torch.equal(random_tensor(42, (2, 3)), torch.rand(2, 3))
    True
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(shape, generator=generator)


def jsonable(obj: Any) -> Any:
    """Dataclasses, tensors, tuples and floats as strict JSON values.

    Non-finite floats become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (strict JSON
    has no such numbers).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    if isinstance(obj, (np.generic,)):
        return jsonable(obj.item())
    return obj
