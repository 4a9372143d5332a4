"""Loss functions: pure functions of tensors, options keyword-only.

The binary / multi-label (sigmoid) family lives in :mod:`crossent.functional._binary`, the
softmax (multi-class) family in :mod:`crossent.functional._softmax`.
"""

from crossent.functional._binary import (
    asymmetric_loss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_focal_loss,
    poly1_focal_loss,
    sigmoid_focal_loss,
)
from crossent.functional._softmax import (
    cross_entropy,
    poly1_cross_entropy,
    softmax_focal_loss,
)

__all__ = [
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_focal_loss",
    "cross_entropy",
    "poly1_cross_entropy",
    "poly1_focal_loss",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
