"""crossent: classification losses for PyTorch that are exact, finite in every precision, and fast.

The public API is exactly what ``__all__`` lists: the functional losses (also in
:mod:`crossent.functional`), their modules (also in :mod:`crossent.nn`) and
:class:`GradientAccumulator` (exact means under gradient accumulation).
"""

from crossent._validation import set_value_checks
from crossent.accumulation import GradientAccumulator
from crossent.functional import (
    asymmetric_loss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_focal_loss,
    sigmoid_focal_loss,
)
from crossent.nn import (
    AsymmetricLoss,
    BCELoss,
    BCEWithLogitsLoss,
    BinaryFocalLoss,
    FocalLoss,
)

__version__ = "0.1.0"

__all__ = [
    "AsymmetricLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "BinaryFocalLoss",
    "FocalLoss",
    "GradientAccumulator",
    "__version__",
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_focal_loss",
    "set_value_checks",
    "sigmoid_focal_loss",
]
