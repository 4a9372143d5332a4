"""Loss functions: pure functions of tensors, options keyword-only.

The binary / multi-label (sigmoid) family lives in :mod:`crossent.functional._binary`.
"""

from crossent.functional._binary import (
    asymmetric_loss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_focal_loss,
    sigmoid_focal_loss,
)

__all__ = [
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_focal_loss",
    "sigmoid_focal_loss",
]
