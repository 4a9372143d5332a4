"""Fused linear + loss: a classifier head and its loss in one chunked pass.

:func:`linear_cross_entropy` (a drop-in for torch's ``F.linear_cross_entropy``) and
:func:`linear_loss` (any crossent loss by name) compute the loss of ``F.linear(x, W, b)``
one block of rows (or, for a sigmoid loss over more classes than rows, of classes) at a
time, so the ``(N, V)`` logits and their gradient never exist whole;
:mod:`crossent.linear._chunked` describes the pass and its memory bound.
"""

from crossent.linear._functional import linear_cross_entropy, linear_loss

__all__ = ["linear_cross_entropy", "linear_loss"]
