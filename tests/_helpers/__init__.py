"""Shared test helpers: the dtype tolerance table, a verbose assert, float64 references."""

from tests._helpers.tolerances import TOLERANCES, assert_as_exact_as, assert_close, tolerance

__all__ = ["TOLERANCES", "assert_as_exact_as", "assert_close", "tolerance"]
