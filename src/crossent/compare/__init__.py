"""``crossent compare``: which loss works on my data.

Trains the same model with each chosen loss on the same splits, initialisations and batches,
over several seeds; evaluates the test predictions with the metrics that matter under
imbalance; and writes a report (CSV, JSON, Markdown, self-contained HTML) whose verdict says
which loss to use for ranking, for decisions at a threshold and for calibrated probabilities.

* :func:`run_compare` -- the command line's comparison: a built-in data set (Caravan insurance
  data by default) or a CSV file, and a small MLP;
* :func:`compare_models` -- your own model on your own train / validation / test data.

>>> from crossent.compare import CompareConfig
>>> CompareConfig().data_name(), CompareConfig(losses=["ce", "poly1"]).data_name()
('caravan', 'digits-lt')
"""

from crossent.compare.custom import compare_models
from crossent.compare.data import (
    BUILTIN_DATASETS,
    DEFAULT_DATA,
    CompareError,
    Dataset,
    load_dataset,
)
from crossent.compare.runner import CompareConfig, CompareResult, Progress, run_compare

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_DATA",
    "CompareConfig",
    "CompareError",
    "CompareResult",
    "Dataset",
    "Progress",
    "compare_models",
    "load_dataset",
    "run_compare",
]
