"""The one dtype tolerance table of the suite.

float64 and float32 are the issue's bars (1e-12 and 1e-6 relative against torch). float16 and
bfloat16 inputs are computed in float32 inside, so their error is the rounding of the input and
the output to the half format: about one unit in the last place of the result (2**-10, 2**-7).
"""

from __future__ import annotations

import torch

# dtype -> (rtol, atol)
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-14),
    torch.float32: (1e-6, 1e-7),
    torch.float16: (2e-3, 1e-4),
    torch.bfloat16: (1.6e-2, 1e-3),
}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    check_dtype: bool = True,
    msg: str = "",
) -> None:
    """``torch.testing.assert_close`` with the table's tolerance for ``dtype``."""
    tol = tolerance(dtype or actual.dtype)
    torch.testing.assert_close(
        actual,
        expected,
        check_dtype=check_dtype,
        **tol,
        msg=(lambda m: f"{msg}\n{m}") if msg else None,
    )
