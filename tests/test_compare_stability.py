"""The verdict holds: on the default data sets, no claim of the report -- which loss is best on
a metric, which are worse beyond the seed noise -- changes when the patience goes from its
default to five times it.

Each run keeps the epoch of its lowest validation loss. Once a model overfits, its validation
loss rises and stays above that low, so training longer (a larger patience) keeps the same
epoch; a validation *metric* would keep finding new highs by chance (average precision with
a few dozen positives moves in steps), and the comparison would depend on the patience.

The smallest check that is still the real one: the default settings, the default losses, 3
seeds instead of 5 (every run is compared, so fewer seeds check fewer runs, not a weaker
rule), and an epoch limit high enough that the long-patience runs stop by patience too.
"""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("sklearn")

from crossent.compare import CompareConfig, run_compare

pytestmark = pytest.mark.slow


def claims(result) -> dict[str, tuple[str, list[str]]]:
    """Per metric: the best loss, and the losses worse than it beyond the seed noise."""
    return {
        metric: (result.best(metric), sorted(c.loss for c in comps if c.significant))
        for metric, comps in result.comparisons.items()
    }


@pytest.mark.parametrize("data", ["caravan", "digits-lt"])
def test_no_claim_changes_with_five_times_the_patience(data):
    default = CompareConfig(data=data, seeds=3)
    five = dataclasses.replace(
        default, patience=5 * default.patience, max_epochs=default.max_epochs + 5 * default.patience
    )
    short, long = run_compare(default), run_compare(five)
    # Both stopped by their rule, not by the epoch limit: the default run is the default.
    assert not short.unflattened() and not long.unflattened()
    kept = {(r.loss, r.seed): r.history.best_epoch for r in short.runs}
    moved = [
        (r.loss, r.seed, kept[(r.loss, r.seed)], r.history.best_epoch)
        for r in long.runs
        if r.history.best_epoch != kept[(r.loss, r.seed)]
    ]
    assert claims(short) == claims(long), f"kept epochs that moved (loss, seed, from, to): {moved}"
    # Every long run trained at least 4 x patience epochs further: the check compares something.
    for a, b in zip(short.runs, long.runs, strict=True):
        assert b.history.epochs_run >= a.history.epochs_run + 4 * default.patience
