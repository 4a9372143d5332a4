"""Vocab-parallel losses (``vocab_group=``): each rank holds a slice of the classes.

Four CPU processes joined by gloo, in one spawn (tests/_helpers/vocab_checks.py), run every
loss family as a vocab group of three ranks (uneven slices, the middle rank without any class)
and as two vocab groups of two, then as two data-parallel replicas of two vocab ranks with
``reduction="global_mean"``; the fused linear + loss runs with each rank's rows of the head's
weight in the same groups. The reference
is one process on the concatenated float64 logits (``backend="reference"``, autograd); the
tests below assert on what the ranks measured.
"""

from __future__ import annotations

import pytest
import torch

import crossent
from tests._helpers.distributed import run_distributed
from tests._helpers.vocab_checks import CASES, GRID_CASES, REDUCTIONS, vocab_checks

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="torch.distributed is not available"
    ),
]

RTOL = 1e-10  # float64: the one-process loss, to rounding
CASE_IDS = [c.id for c in CASES]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab")
    return run_distributed(vocab_checks, out, world_size=4, timeout_s=400)


@pytest.fixture(params=[2, 3], ids=["world2", "world3"])
def ranks(request, spawned):
    """What each rank of the vocab groups of this size measured."""
    return [r[request.param] for r in spawned if request.param in r]


@pytest.mark.distributed
@pytest.mark.parametrize("case", CASE_IDS)
def test_vocab_parallel_equals_one_process(ranks, case):
    """Value (the same on every rank) and each rank's gradient slice, every reduction."""
    expected = next(c for c in CASES if c.id == case)
    for rank, result in enumerate(ranks):
        for reduction in REDUCTIONS:
            r = result["cases"][case][reduction]
            where = f"rank {rank}, reduction={reduction!r}: {r}"
            assert r["value_error"] <= RTOL, where
            assert r["grad_error"] <= RTOL, where
            assert r["same_on_every_rank"], where
            assert r["dtype"] == torch.float64, where
            elementwise = expected.target.startswith("binary") and reduction == "none"
            # one all-reduce per round of statistics, nothing else (no layout exchange)
            assert r["all_reduces"] == (0 if elementwise else expected.all_reduces), where
            assert r["collectives"] == r["all_reduces"], where


@pytest.mark.distributed
def test_other_forms_of_the_call(ranks):
    """(N, C, d) input, a module, a (C,) sample, and the closed form called on row chunks
    with a layout computed once (then the counts no longer travel: still 2 all-reduces per
    chunk, the MAX of the row maxima and the SUM of the statistics)."""
    for rank, result in enumerate(ranks):
        f = result["forms"]
        for key in ("nd_value", "nd_grad", "module_grad", "unbatched_value", "unbatched_grad"):
            assert f[key] <= RTOL, (rank, key, f)
        assert f["chunks_value"] <= RTOL and f["chunks_grad"] <= RTOL, (rank, f)
        assert f["layout"] == 0.0, (rank, f)
        assert f["chunks_all_reduces"] == 4, (rank, f)


@pytest.mark.distributed
def test_fused_linear_with_vocab_group(ranks):
    """``linear_cross_entropy`` / ``linear_loss`` with each rank's rows of the head (three
    blocks per call): the one-process value on every rank, the full input gradient on every
    rank, each rank's slice of the weight and bias gradients. Collectives: the softmax
    family's layout once, two all-reduces per block (three for the focal loss's per-class
    terms), and ``grad_input`` all-reduced once
    (a forward and the backward's second pass for ``"none"``); the sigmoid family one
    all-reduce per block for a reduced loss, and only ``grad_input``'s for ``"none"``."""
    from tests._helpers.vocab_checks import LINEAR_CASES

    blocks = 3
    for rank, result in enumerate(ranks):
        lin = result["linear"]
        for case_id, _, _, kind, _, per_block in LINEAR_CASES:
            for reduction in REDUCTIONS:
                r = lin[(case_id, reduction)]
                where = f"rank {rank}, {case_id}, reduction={reduction!r}: {r}"
                for key in ("value", "input_grad", "weight_grad", "bias_grad"):
                    assert r[f"{key}_error"] <= RTOL, where
                assert r["same_on_every_rank"], where
                assert r["dtype"] == torch.float64, where
                if kind == "binary":
                    expected = 1 if reduction == "none" else blocks + 1
                else:
                    per_pass = per_block * blocks
                    expected = 1 + (2 * per_pass if reduction == "none" else per_pass) + 1
                assert r["all_reduces"] == expected, where
                assert r["collectives"] == r["all_reduces"], where
        # blocks from the memory budget: sized by the largest slice, as many on every rank
        # (four), and the layout exchanged once (for the sigmoid family only for this)
        for case_id, _, _, _, _, per_block in (LINEAR_CASES[0], LINEAR_CASES[-1]):
            r = lin[("budget", case_id)]
            where = f"rank {rank}, {case_id}, blocks from the budget: {r}"
            for key in ("value", "input_grad", "weight_grad", "bias_grad"):
                assert r[f"{key}_error"] <= RTOL, where
            assert r["same_on_every_rank"], where
            assert r["all_reduces"] == 1 + 4 * max(per_block, 1) + 1, where
        assert lin["module"]["input_grad_error"] <= RTOL, (rank, lin["module"])
        assert lin["module"]["weight_grad_error"] <= RTOL, (rank, lin["module"])
        assert "but got 'compiled'" in lin["compiled_backend"], (rank, lin["compiled_backend"])


@pytest.mark.distributed
def test_errors_are_clear_and_raised_on_every_rank(ranks):
    total = {4: 8, 3: 7}[len(ranks)]  # four ranks of the groups of two
    for rank, result in enumerate(ranks):
        m = result["errors"]
        assert m["target_out_of_range"] == (
            f"ValueError: Expected `target` to hold class indices in [0, {total - 1}] for an "
            f"input with C = {total} classes or equal to `ignore_index` (-100), but it holds "
            f"{total}."
        ), rank
        assert "but it holds -3." in m["negative_target"], rank
        assert m["reference_backend"].startswith(
            'ValueError: Expected `backend` to be "auto" or "fused" with `vocab_group`, but '
            "got 'reference'"
        ), rank
        assert "but got 'compiled'" in m["compiled_backend"], rank
        assert m["not_a_group"] == (
            "TypeError: Expected `vocab_group` to be a torch.distributed process group (such "
            "as torch.distributed.new_group(ranks) or torch.distributed.group.WORLD), but got "
            "list."
        ), rank
        assert m["weight_requires_grad"].startswith(
            "ValueError: Expected only `input` to require a gradient with `vocab_group`"
        ), rank


@pytest.mark.distributed
def test_global_mean_over_data_parallel_replicas(spawned):
    """2 replicas x 2 vocab ranks: ``reduction="global_mean"`` with ``process_group`` (the
    replicas) and ``vocab_group`` gives DDP the one-process gradient; one all-reduce more
    than "mean" (the denominator over the replicas). Without ``process_group`` (the default
    group: every rank) the value is the same: each vocab rank adds the same denominator.
    The fused linear + cross entropy too: each replica's rows, each vocab rank's rows of the
    head."""
    extra = {"cross_entropy": 2, "softmax_focal_loss": 3, "binary_cross_entropy_with_logits": 1}
    for rank, result in enumerate(spawned):
        for name, _, _ in GRID_CASES:
            r = result["grid"][name]
            assert r["value_error"] <= RTOL, (rank, name, r)
            assert r["grad_error"] <= RTOL, (rank, name, r)
            assert r["all_reduces"] == extra[name] + 1, (rank, name, r)
            assert r["default_group_error"] <= RTOL, (rank, name, r)
        r = result["grid"]["linear_cross_entropy"]
        assert r["value_error"] <= RTOL and r["grad_error"] <= RTOL, (rank, r)


def test_vocab_group_needs_an_initialised_process_group():
    assert not torch.distributed.is_initialized()
    match = (
        r"Expected an initialised torch.distributed process group for `vocab_group`, but "
        r"torch.distributed is not initialised"
    )
    with pytest.raises(ValueError, match=match):
        crossent.cross_entropy(torch.randn(2, 3), torch.tensor([0, 4]), vocab_group=object())
    with pytest.raises(ValueError, match=match):
        crossent.linear_cross_entropy(
            torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 4]), vocab_group=object()
        )
