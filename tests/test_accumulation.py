"""GradientAccumulator: accumulated gradients equal the full-batch gradient, for every loss,
with micro-batches of different sizes and valid counts (incl. one with nothing valid).

Its distributed use (DDP, no_sync, different micro-batch counts per rank) is checked in
tests/test_distributed.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import crossent
from crossent._reduction import record_denominators, reduce_loss
from tests._helpers import assert_close
from tests._helpers.cases import (
    backend_option,
    ignore_all,
    loss_forms,
    make_options,
    make_target,
    with_backends,
)

FORMS = loss_forms()
SPLITS = {"3+9+4": (3, 9, 4), "1+15": (1, 15), "16": (16,)}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def _setup(form, seed, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    target = make_target(form, 16, generator=g, ignore_fraction=0.3 if ignore else 0.0)
    if ignore:
        target[:3] = ignore_all(form, target[:3])  # the first micro-batch of "3+9+4": none valid
    options = make_options(form, generator=g, ignore=ignore)
    options = {
        k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in options.items()
    }
    return x, target, options


@pytest.mark.parametrize("ignore", [True, False], ids=["ignored", "all_valid"])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("form,backend", with_backends(FORMS))
def test_accumulated_gradient_equals_full_batch(form, backend, split, ignore):
    """On the fused path too: a kernel that folds a mean known in advance (no ignore_index)
    into its pass must leave the division to the accumulator while it records."""
    x, target, options = _setup(form, seed=len(split), ignore=ignore)
    loss_fn = form.make(**options, **backend_option(backend))

    full_model = _model()
    full = loss_fn(full_model(x), target)
    full.backward()

    model = _model()
    acc = crossent.GradientAccumulator()
    start = 0
    for size in SPLITS[split]:
        part = slice(start, start + size)
        start += size
        acc.loss(loss_fn, model(x[part]), target[part]).backward()
    assert acc.num_calls == len(SPLITS[split])
    mean = acc.normalize_(model.parameters())
    assert acc.num_calls == 0  # reset for the next optimizer step

    assert mean.dtype == torch.float64
    assert_close(mean, full.detach())
    for p, q in zip(model.parameters(), full_model.parameters()):
        assert_close(p.grad, q.grad)  # float64: 1e-12 relative


def test_naive_accumulation_is_wrong_so_the_test_can_fail():
    """The usual recipe, loss / K, differs from the full batch when valid counts differ."""
    form = FORMS[0]
    x, target, options = _setup(form, seed=1)
    loss_fn = form.make(**options)
    full_model, model = _model(), _model()
    loss_fn(full_model(x), target).backward()
    for part in (slice(0, 3), slice(3, 12), slice(12, 16)):
        (loss_fn(model(x[part]), target[part]) / 3).backward()
    diff = (model[0].weight.grad - full_model[0].weight.grad).norm() / full_model[
        0
    ].weight.grad.norm()
    assert diff > 0.05


def test_mean_reduction_normalises_locally():
    acc = crossent.GradientAccumulator(reduction="mean")
    x = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    y = torch.tensor([1.0, -1.0, 0.0])
    acc.loss(crossent.binary_cross_entropy_with_logits, x, y, ignore_index=-1).backward()
    mean = acc.normalize_(x)
    x2 = x.detach().clone().requires_grad_(True)
    ref = crossent.binary_cross_entropy_with_logits(x2, y, ignore_index=-1)
    ref.backward()
    assert_close(mean, ref.detach())
    assert_close(x.grad, x2.grad)


def test_half_precision_gradients_are_scaled_in_float32():
    """A scale of 1 / 1e8 is below float16's smallest subnormal: scaled in float32, the
    gradient keeps its value."""
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))
    p.grad = torch.tensor([3e4, 1e4], dtype=torch.float16)
    acc = crossent.GradientAccumulator()
    acc._sums.append(torch.tensor(5.0))
    acc._denominators.append(torch.tensor(1e8))
    acc.normalize_([p])
    expected = torch.tensor([3e4, 1e4]) / 1e8
    assert_close(p.grad, expected.to(torch.float16))
    assert (p.grad != 0).all()


def test_records_exactly_what_mean_divides_by():
    loss = torch.tensor([1.0, 2.0, 0.0])
    with record_denominators() as records:
        out = reduce_loss(loss, "mean", denominator=torch.tensor(2.0))
        reduce_loss(loss, "sum")  # "sum" and "none" are not recorded
        reduce_loss(loss, "none")
    assert out.item() == 3.0
    assert [(t.item(), d.item()) for t, d in records] == [(3.0, 2.0)]
    # Outside the context: the mean again, nothing recorded
    assert reduce_loss(loss, "mean", denominator=torch.tensor(2.0)).item() == 1.5


def test_partial_and_module_are_accepted():
    x = torch.randn(4, 3, requires_grad=True)
    y = (torch.rand(4, 3) < 0.5).float()
    acc = crossent.GradientAccumulator()
    acc.loss(functools.partial(crossent.sigmoid_focal_loss, gamma=1.0), x, y).backward()
    acc.loss(crossent.FocalLoss(gamma=1.0), x, y).backward()
    mean = acc.normalize_(x)
    x2 = x.detach().clone().requires_grad_(True)
    ref = crossent.sigmoid_focal_loss(x2, y, gamma=1.0)
    ref.backward()
    assert_close(mean, ref.detach())
    assert_close(x.grad, x2.grad)  # the same batch twice: the mean of both


@pytest.mark.parametrize(
    "loss_fn,name",
    [
        (F.binary_cross_entropy_with_logits, "binary_cross_entropy_with_logits"),
        (functools.partial(crossent.binary_cross_entropy_with_logits, reduction="sum"), "partial"),
    ],
    ids=["torch_loss", "sum_reduction"],
)
def test_a_loss_that_records_nothing_is_an_error(loss_fn, name):
    acc = crossent.GradientAccumulator()
    x, y = torch.randn(3), torch.rand(3)
    with pytest.raises(ValueError, match=rf"but {name} made 0 such reductions"):
        acc.loss(loss_fn, x, y)
    assert acc.num_calls == 0


def test_normalize_before_any_loss_is_an_error():
    with pytest.raises(RuntimeError, match=r"before any loss was recorded"):
        crossent.GradientAccumulator().normalize_([torch.zeros(1)])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"reduction": "sum"},
            r'Expected `reduction` to be one of "mean", "global_mean", but got \'sum\'',
        ),
        (
            {"reduction": "mean", "process_group": object()},
            r'Expected `reduction` to be "global_mean" when `process_group` is given',
        ),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        crossent.GradientAccumulator(**kwargs)


def test_repr():
    assert (
        repr(crossent.GradientAccumulator())
        == "GradientAccumulator(reduction='global_mean', calls=0)"
    )
