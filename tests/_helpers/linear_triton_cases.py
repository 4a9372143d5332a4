"""The fused linear + loss through the Triton loss kernels, run as
``python -m tests._helpers.linear_triton_cases`` with ``TRITON_INTERPRET=1`` (started by
tests/test_linear.py). Small CPU tensors, in blocks of rows and, for the sigmoid losses, of
classes; prints one line per failure, exits 1 if any, else
prints ``N cases passed``.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

import crossent
from crossent.kernels import no_fallback
from crossent.linear import _chunked
from crossent.registry import get_loss


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("TRITON_INTERPRET=1 must be set")
        return 2
    failures, count = [], 0
    g = torch.Generator().manual_seed(0)
    n, h, v = 5, 4, 7
    index = torch.randint(0, v, (n,), generator=g)
    index[2] = -100
    dense = (torch.rand(n, v, generator=g) < 0.3).double()
    cases = [
        ("ce", index, {"weight": torch.rand(v, generator=g, dtype=torch.float64) + 0.5}),
        ("ce", index, {"label_smoothing": 0.1}),
        ("softmax_focal", index, {"gamma": 2.0}),
        ("focal", dense, {"gamma": 2.0, "alpha": 0.25}),
        ("asl", dense, {}),
        ("bce", dense, {"pos_weight": torch.rand(v, generator=g, dtype=torch.float64) + 0.5}),
    ]
    # blocks of classes: 3 of the 7 per block (the last narrower) over all 5 rows
    _chunked.BLOCK_ELEMENTS = 3 * n
    for (loss, target, opts), dtype, reduction, chunk in [
        (c, d, r, k)
        for c in cases
        for d in (torch.float64, torch.float32)
        for r in ("mean", "none")
        for k in ((2,) if c[0] in ("ce", "softmax_focal") else (2, None))
    ]:
        x = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        w = torch.randn(v, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        b = torch.randn(v, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        t = target.to(dtype) if target.is_floating_point() else target
        o = {k: (x_.to(dtype) if isinstance(x_, torch.Tensor) else x_) for k, x_ in opts.items()}
        with no_fallback():
            ours = crossent.linear_loss(
                x,
                w,
                t,
                loss=loss,
                linear_bias=b,
                reduction=reduction,
                backend="triton",
                batch_chunk_size=chunk,
                **o,
            )
        ref = get_loss(loss).logits(
            F.linear(x, w, b), t, reduction=reduction, backend="reference", **o
        )
        grad_out = torch.rand(ours.shape, generator=g, dtype=torch.float64).to(dtype) + 0.5
        got = torch.autograd.grad(ours, (x, w, b), grad_out)
        want = torch.autograd.grad(ref, (x, w, b), grad_out)
        rtol = 1e-10 if dtype == torch.float64 else 1e-4
        blocks = "rows" if chunk else "classes"
        label = f"{loss} {opts and sorted(opts)} {dtype} {reduction} blocks of {blocks}"
        try:
            torch.testing.assert_close(ours, ref, rtol=rtol, atol=rtol * 1e-2)
            for a, r in zip(got, want, strict=True):
                torch.testing.assert_close(a, r, rtol=rtol, atol=rtol * 1e-2)
        except AssertionError as exc:
            failures.append(f"{label}: {str(exc).splitlines()[-2:]}")
        count += 1
    for line in failures:
        print(line)
    if failures:
        print(f"{len(failures)} failures in {count} cases")
        return 1
    print(f"{count} cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
