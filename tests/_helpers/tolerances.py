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


def assert_as_exact_as(
    actual: torch.Tensor, exact: torch.Tensor, same_dtype_reference: torch.Tensor
) -> None:
    """``actual`` equals ``exact`` (a float64 evaluation on the same rounded inputs) to the
    table's tolerance for its dtype -- or, on the elements where an established implementation
    in the same dtype (``same_dtype_reference``: torch's, or crossent's reference path) misses
    the exact value by more than that, ``actual`` is at most twice as far off.

    For ill-conditioned results (a soft target's gradient ``p - y`` at ``p ~ y``, a smoothed
    cross-entropy gradient at a confident class) no float32 evaluation meets the table against
    the exact value, and two correct ones disagree by twice that; this compares each with the
    truth instead. Elsewhere, and everywhere in float64, it is the table's tolerance.
    """
    rtol, atol = TOLERANCES[actual.dtype]
    exact64 = exact.double()
    ref_error = (same_dtype_reference.double() - exact64).abs()
    allowed = torch.maximum(atol + rtol * exact64.abs(), 2 * ref_error)
    bad = ~((actual.double() - exact64).abs() <= allowed)
    if bad.any():
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} elements are off: actual {actual[bad][:4]}, "
            f"exact {exact[bad][:4]}, same-dtype reference {same_dtype_reference[bad][:4]}"
        )
