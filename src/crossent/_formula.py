"""A tiny expression tree for ``explain``: one object both prints a formula with the numbers
substituted and evaluates that same formula in float64.

The printed numbers are rounded for reading; the evaluation uses the exact ones. Probabilities
carry their logarithms (from ``log_sigmoid`` / ``log_softmax``), so ``log(p)``, ``log(1 - p)``
and ``(1 - p)^gamma`` evaluate exactly even where ``p`` rounds to 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "Const",
    "Data",
    "Expr",
    "Log",
    "Neg",
    "OneMinus",
    "Pow",
    "Prob",
    "Sum",
    "fmt",
    "log_sigmoid",
    "logaddexp",
    "mul",
    "power",
]

# Binding strength, for parentheses: sums < products < powers < atoms.
_SUM, _NEG, _MUL, _POW, _ATOM = 1, 2, 3, 4, 5


def fmt(value: float) -> str:
    """Data as torch prints it: 4 decimals; scientific where 4 decimals would show nothing."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == 0:
        return "0.0000"  # also -0.0
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.3e}"


def log_sigmoid(z: float) -> float:
    """``log(sigmoid(z))`` in float64 without overflow or rounding to 0."""
    if z >= 0:
        return -math.log1p(math.exp(-z))
    return z - math.log1p(math.exp(z))


def logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def _safe_log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


class Expr:
    precedence = _ATOM

    def value(self) -> float:
        raise NotImplementedError

    def log(self) -> float:
        """``log(value)``; subclasses that know it more exactly override this."""
        return _safe_log(self.value())

    def text(self) -> str:
        raise NotImplementedError

    def wrapped(self, precedence: int) -> str:
        text = self.text()
        return f"({text})" if self.precedence < precedence else text

    def __str__(self) -> str:
        return self.text()


class _Number(Expr):
    """A number leaf; its subclass decides how it prints."""

    def __init__(self, value: float) -> None:
        self.v = float(value)
        self.precedence = _ATOM if self.v >= 0 else _NEG

    def value(self) -> float:
        return self.v


class Const(_Number):
    """An option of the loss (gamma, alpha, a weight): printed as given (``2``, ``0.25``)."""

    def text(self) -> str:
        return f"{self.v:g}"


class Data(_Number):
    """A number from the data (a target, a computed weight): printed with 4 decimals."""

    def text(self) -> str:
        return fmt(self.v)


class Prob(Expr):
    """A probability with its exact ``log p`` and ``log(1 - p)``."""

    def __init__(self, log_p: float, log_1mp: float) -> None:
        self.log_p = float(log_p)
        self.log_1mp = float(log_1mp)

    @classmethod
    def from_logit(cls, x: float) -> Prob:
        return cls(log_sigmoid(x), log_sigmoid(-x))

    @classmethod
    def from_value(cls, p: float) -> Prob:
        return cls(_safe_log(p), math.log1p(-p) if p < 1 else -math.inf)

    def value(self) -> float:
        return math.exp(self.log_p)

    def log(self) -> float:
        return self.log_p

    def text(self) -> str:
        return fmt(self.value())


class OneMinus(Expr):
    """``1 - p`` for a :class:`Prob` ``p``, printed as ``1 - 0.8823``."""

    precedence = _SUM

    def __init__(self, p: Prob) -> None:
        self.p = p

    def value(self) -> float:
        return math.exp(self.p.log_1mp)

    def log(self) -> float:
        return self.p.log_1mp

    def text(self) -> str:
        return f"1 - {self.p.text()}"


class Log(Expr):
    """``log(arg)``; with ``clamp``, ``max(log(arg), clamp)`` (printed so only where it bites)."""

    def __init__(self, arg: Expr, clamp: float | None = None) -> None:
        self.arg = arg
        self.clamp = clamp

    def _clamped(self) -> bool:
        return self.clamp is not None and self.arg.log() < self.clamp

    def value(self) -> float:
        v = self.arg.log()
        return max(v, self.clamp) if self.clamp is not None else v

    def text(self) -> str:
        inner = f"log({self.arg.text()})"
        return f"max({inner}, {self.clamp:g})" if self._clamped() else inner


class Pow(Expr):
    precedence = _POW

    def __init__(self, base: Expr, exponent: float) -> None:
        self.base = base
        self.exponent = float(exponent)

    def value(self) -> float:
        if self.exponent == 0:  # b^0 = 1 even at b = 0, as in the library (factor left out)
            return 1.0
        # exp(g log b): the same route as the library, exact where b rounds to 0 or 1.
        return math.exp(self.exponent * self.base.log())

    def text(self) -> str:
        return f"{self.base.wrapped(_ATOM)}^{self.exponent:g}"


class Mul(Expr):
    precedence = _MUL

    def __init__(self, factors: Sequence[Expr]) -> None:
        self.factors = list(factors)

    def value(self) -> float:
        out = 1.0
        for f in self.factors:
            out *= f.value()
        return out

    def text(self) -> str:
        parts = [self.factors[0].wrapped(_NEG if self.factors[0].precedence == _NEG else _MUL)]
        parts += [f.wrapped(_MUL + 1 if isinstance(f, Mul) else _MUL) for f in self.factors[1:]]
        # A negative number inside a product reads better in parentheses: 0.5 · (-1).
        parts = [parts[0]] + [
            f"({p})" if p.startswith("-") and not p.startswith("(") else p for p in parts[1:]
        ]
        return " · ".join(parts)


class Neg(Expr):
    precedence = _NEG

    def __init__(self, arg: Expr) -> None:
        self.arg = arg

    def value(self) -> float:
        return -self.arg.value()

    def text(self) -> str:
        return "-" + self.arg.wrapped(_MUL)


class Sum(Expr):
    """``a + b - c``; each term is ``(sign, expr)`` with sign +1 or -1."""

    precedence = _SUM

    def __init__(self, terms: Sequence[tuple[int, Expr]]) -> None:
        self.terms = list(terms)

    def value(self) -> float:
        return math.fsum(sign * t.value() for sign, t in self.terms)

    def text(self) -> str:
        out = ""
        for i, (sign, term) in enumerate(self.terms):
            if i == 0:
                out = ("-" if sign < 0 else "") + term.wrapped(_NEG if sign > 0 else _MUL)
                continue
            negated = _negated(term)
            if negated is not None:  # a + (-b) reads as a - b
                sign, body = -sign, negated
            else:
                body = term.wrapped(_MUL)
            out += (" - " if sign < 0 else " + ") + body
        return out


def _negated(term: Expr) -> str | None:
    """The text of ``-term`` where that is ``term`` without its leading minus, else None."""
    if isinstance(term, Neg):
        return term.arg.wrapped(_MUL)
    if isinstance(term, _Number) and term.v < 0:
        return type(term)(-term.v).text()
    if isinstance(term, Mul) and isinstance(term.factors[0], _Number):
        first = term.factors[0]
        if first.v < 0:
            return Mul([type(first)(-first.v), *term.factors[1:]]).text()
    return None


def mul(*factors: Expr | None) -> Expr:
    """A product that leaves out ``None`` and constant 1s (``1 · x`` reads as ``x``)."""
    kept: list[Expr] = []
    for f in factors:
        if f is None or (isinstance(f, Const) and f.v == 1.0):
            continue
        kept.extend(f.factors if isinstance(f, Mul) else [f])
    kept = kept or [Const(1.0)]
    return kept[0] if len(kept) == 1 else Mul(kept)


def power(base: Expr, exponent: float) -> Expr | None:
    """``base^exponent`` for a product: left out when the exponent is 0, plain base at 1."""
    if exponent == 0:
        return None
    if exponent == 1:
        return base
    return Pow(base, exponent)
