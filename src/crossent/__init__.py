"""crossent: classification losses for PyTorch that are exact, finite in every precision, and fast.

The public API is exactly what ``__all__`` lists: the functional losses (also in
:mod:`crossent.functional`), their modules (also in :mod:`crossent.nn`), the class-weight
tools (also in :mod:`crossent.weights`), the fused linear + loss functions (also in
:mod:`crossent.linear`) and :class:`GradientAccumulator` (exact means under
gradient accumulation, also in :mod:`crossent.accumulation`).
"""

from crossent._validation import set_value_checks
from crossent.accumulation import GradientAccumulator
from crossent.functional import (
    asymmetric_loss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_focal_loss,
    cross_entropy,
    poly1_cross_entropy,
    poly1_focal_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from crossent.linear import linear_cross_entropy, linear_loss
from crossent.nn import (
    AsymmetricLoss,
    BCELoss,
    BCEWithLogitsLoss,
    BinaryFocalLoss,
    CrossEntropyLoss,
    FocalLoss,
    LinearCrossEntropyLoss,
    LinearLoss,
    PolyFocalLoss,
    PolyLoss,
    SoftmaxFocalLoss,
)
from crossent.weights import class_counts, class_weights, pos_weight

__version__ = "0.1.0"

__all__ = [
    "AsymmetricLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "BinaryFocalLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "GradientAccumulator",
    "LinearCrossEntropyLoss",
    "LinearLoss",
    "PolyFocalLoss",
    "PolyLoss",
    "SoftmaxFocalLoss",
    "__version__",
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_focal_loss",
    "class_counts",
    "class_weights",
    "cross_entropy",
    "linear_cross_entropy",
    "linear_loss",
    "poly1_cross_entropy",
    "poly1_focal_loss",
    "pos_weight",
    "set_value_checks",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
