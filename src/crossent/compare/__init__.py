"""``crossent compare``: which loss works on my data.

Trains the same small model with each chosen loss on the same splits, initialisations and
batches, over several seeds; evaluates the test predictions with the metrics that matter under
imbalance; and writes a report (CSV, JSON, Markdown, self-contained HTML).

>>> from crossent.compare import CompareConfig
>>> CompareConfig().data
'digits-imbalanced'
"""

from crossent.compare.data import BUILTIN_DATASETS, CompareError, Dataset, load_dataset
from crossent.compare.runner import CompareConfig, CompareResult, Progress, run_compare

__all__ = [
    "BUILTIN_DATASETS",
    "CompareConfig",
    "CompareError",
    "CompareResult",
    "Dataset",
    "Progress",
    "load_dataset",
    "run_compare",
]
