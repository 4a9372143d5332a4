"""reduction="global_mean" under torch.distributed: DDP gradients equal single-process ones.

Two CPU processes joined by gloo run every loss form (every registered loss from logits and
from probabilities, every module) through one DDP step of a small float32 model, in several
scenarios: uneven per-rank batch sizes, ignored targets, weights, a rank whose targets are all
ignored, an empty rank, an explicit ``process_group``. One spawn runs every check
(tests/_helpers/ddp_checks.py); the tests below assert on what it measured.
"""

from __future__ import annotations

import pytest
import torch

import crossent
from tests._helpers import assert_close
from tests._helpers.cases import (
    backend_option,
    loss_forms,
    make_options,
    make_target,
    with_backends,
)
from tests._helpers.ddp_checks import SCENARIOS, compiled_checks, eager_checks, fail_on_rank_one
from tests._helpers.distributed import run_distributed

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

FORMS = loss_forms()
FORM_IDS = [f.id for f in FORMS]
SCENARIO_IDS = [s.name for s in SCENARIOS]
# The bar: DDP parameter gradients equal single-process gradients to 1e-6 relative
# (norm-wise per parameter tensor; float32 model and data).
GRAD_RTOL = 1e-6


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    ranks = run_distributed(eager_checks, tmp_path_factory.mktemp("ddp"), timeout_s=300)
    return ranks


# --------------------------------------------------------------------------------------------
# DDP + global_mean == one process on the concatenated batch
# --------------------------------------------------------------------------------------------


@pytest.mark.distributed
@pytest.mark.parametrize("scenario", SCENARIO_IDS)
@pytest.mark.parametrize("form", FORM_IDS)
def test_ddp_gradients_equal_single_process(eager, form, scenario):
    for rank, result in enumerate(eager):
        error = result["forms"][form, scenario]["grad_error"]
        assert error["normwise"] <= GRAD_RTOL, f"rank {rank}: {error}"


@pytest.mark.distributed
@pytest.mark.parametrize("scenario", SCENARIO_IDS)
@pytest.mark.parametrize("form", FORM_IDS)
def test_value_averaged_over_ranks_is_the_global_mean(eager, form, scenario):
    for result in eager:
        r = result["forms"][form, scenario]
        assert r["value_mean_over_ranks"] == pytest.approx(r["value_reference"], rel=1e-6, abs=1e-7)


@pytest.mark.distributed
@pytest.mark.parametrize("scenario", SCENARIO_IDS)
@pytest.mark.parametrize("form", FORM_IDS)
def test_exactly_one_all_reduce_per_call(eager, form, scenario):
    for result in eager:
        r = result["forms"][form, scenario]
        assert r["collectives"] == ["c10d::allreduce_"]
        assert r["mean_collectives"] == []  # "mean" never communicates


@pytest.mark.distributed
@pytest.mark.parametrize("form", FORM_IDS)
def test_per_rank_mean_differs_so_the_check_can_fail(eager, form):
    """The negative control: DDP with the per-rank "mean" is far from the single-process
    gradient in these scenarios, so the 1e-6 check above is not vacuous."""
    for result in eager:
        errors = [result["forms"][form, s]["per_rank_mean_grad_error"] for s in SCENARIO_IDS]
        assert min(errors) > 1e-2, errors


@pytest.mark.distributed
@pytest.mark.parametrize("form", FORM_IDS)
def test_gradient_accumulation_under_ddp_equals_single_process(eager, form):
    for result in eager:
        r = result["accumulation"][form]
        assert r["grad_error"]["normwise"] <= GRAD_RTOL, r["grad_error"]
        assert r["value"] == pytest.approx(r["value_reference"], rel=1e-6)
        assert r["collectives"] == ["c10d::allreduce_"]  # one per optimizer step


@pytest.mark.distributed
def test_rank_outside_the_process_group_gets_a_clear_error(eager):
    member, outsider = eager[0]["solo"], eager[1]["solo"]
    assert member["value"] == pytest.approx(member["mean"], rel=1e-6)  # a group of one: "mean"
    assert "Expected `process_group` to contain this rank (global rank 1)" in outsider["error"]


@pytest.mark.distributed
@pytest.mark.slow
def test_global_mean_inside_a_compiled_graph(tmp_path):
    """fullgraph=True with an initialised process group: the all-reduce is traced into the
    graph (no graph break), one per loss call, values and gradients equal to eager."""
    ranks = run_distributed(compiled_checks, tmp_path, timeout_s=400)
    for rank, r in enumerate(ranks):
        n = r["calls"]  # one loss of each family, on each of its backends
        assert r["eager_collectives"] == ["c10d::allreduce_"] * n
        assert r["collectives"] == ["c10d::allreduce_"] * n, f"rank {rank}"
        assert r["value_error"] <= 1e-6, (rank, r)
        assert r["grad_error"] <= 1e-6, (rank, r)


@pytest.mark.distributed
def test_a_failing_rank_fails_the_run_at_once(tmp_path):
    """The other rank is stuck in a collective: the runner must not wait for its timeout."""
    import time

    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)rank 1 failed:.*rank 1 gives up"):
        run_distributed(fail_on_rank_one, tmp_path, timeout_s=100, collective_timeout_s=100)
    assert time.monotonic() - start < 60


# --------------------------------------------------------------------------------------------
# Without a process group (no spawn)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form,backend", with_backends(FORMS))
@pytest.mark.parametrize("case", ["all_valid", "weighted_ignored"])
def test_global_mean_outside_a_process_group_is_mean(form, backend, case):
    """Bit for bit, value and gradient, on every backend (a fused kernel that folds a known
    mean into its pass must fold "global_mean" too)."""
    assert not torch.distributed.is_initialized()
    g = torch.Generator().manual_seed(3)
    ignore = weighted = case == "weighted_ignored"
    scores = torch.randn(7, 3, generator=g, dtype=torch.float64) * 3
    target = make_target(form, 7, generator=g, ignore_fraction=0.3 if ignore else 0.0)
    options = make_options(form, generator=g, weighted=weighted, ignore=ignore)
    options = {
        k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in options.items()
    }
    values, grads = [], []
    for reduction in ("mean", "global_mean"):
        s = scores.clone().requires_grad_(True)
        out = form.make(reduction=reduction, **options, **backend_option(backend))(s, target)
        out.backward()
        values.append(out.detach())
        grads.append(s.grad)
    assert torch.equal(values[0], values[1])
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_process_group_without_global_mean_is_an_error(form, reduction):
    g = torch.Generator().manual_seed(0)
    target = make_target(form, 4, generator=g)
    with pytest.raises(
        ValueError,
        match=r'Expected `reduction` to be "global_mean" when `process_group` is given, but got',
    ):
        form.make(reduction=reduction, process_group=object())(torch.randn(4, 3), target)


def test_global_mean_everything_ignored_is_zero_not_nan():
    x = torch.randn(3, 2, requires_grad=True)
    y = torch.full((3, 2), -1.0)
    out = crossent.sigmoid_focal_loss(x, y, ignore_index=-1, reduction="global_mean")
    out.backward()
    assert out.item() == 0.0
    assert_close(x.grad, torch.zeros_like(x))
