"""torch.compile: every loss traces into one graph (fullgraph=True, no graph break), and a
compiled training step gives the eager gradients, on the reference and the fused path.

Compiles are expensive, so there are few of them: one trace (dynamo only, the property that
decides graph breaks) of a function that calls every loss function with every reduction on
every backend, and every module; one inductor compile of every function on the reference
path, for values; one inductor compile of a training step per backend (forward compiled,
backward through the compiled graph); one trace of GradientAccumulator.loss.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import crossent
from crossent.registry import LOSSES
from tests._helpers.cases import cast_options, loss_forms, make_options, make_target

FORMS = loss_forms()
REDUCTIONS = ("none", "mean", "sum", "global_mean")
# The dispatch keyword of the fused kernels, where losses have it: "reference" is the
# autograd path, "fused" the closed-form forward + gradient (what torch.compile traces by
# default). A loss without the keyword has one path, used under either name.
HAS_BACKENDS = any("backend" in spec.options() for spec in LOSSES.values())
BACKENDS = ("reference", "fused") if HAS_BACKENDS else (None,)


def _backend(name):
    return {} if name is None else {"backend": name}


def _call(form, reduction, options_id, backend, g):
    ignore = weighted = options_id == "weighted_ignore"
    scores = torch.randn(6, 3, generator=g) * 3
    target = make_target(form, 6, generator=g, ignore_fraction=0.3 if ignore else 0.0)
    options = make_options(form, generator=g, weighted=weighted, ignore=ignore)
    fn = form.make(reduction=reduction, **options, **_backend(backend))
    return (f"{form.id}/{reduction}/{options_id}/{backend}", fn, scores, target)


def _calls(forms, combos, backends=(BACKENDS[0],)):
    """(label, loss(scores, target), scores, target) for every form x (reduction, options) x
    backend."""
    g = torch.Generator().manual_seed(11)
    return [
        _call(form, reduction, options_id, backend, g)
        for form in forms
        for reduction, options_id in combos
        for backend in backends
    ]


def _trace_calls():
    """Every function with every reduction (weights and ignore_index on: their code paths) and
    without options once, on every backend; every module once (it only forwards)."""
    functions = [f for f in FORMS if f.module is None]
    modules = [f for f in FORMS if f.module is not None]
    combos = [(r, "weighted_ignore") for r in REDUCTIONS] + [("mean", "plain")]
    return _calls(functions, combos, BACKENDS) + _calls(modules, [("mean", "weighted_ignore")])


def _one_form_per_family(backend=None):
    """The first registered logits loss of each family; with ``backend``, the first that has
    the ``backend`` option, where the family has one."""
    chosen = {}
    for form in loss_forms(modules=False):
        if form.probs:
            continue
        fits = backend is None or "backend" in form.spec.options()
        family = form.spec.family
        if family not in chosen or (fits and not chosen[family][1]):
            chosen[family] = (form, fits)
    return [form for form, _ in chosen.values()]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_every_loss_traces_into_one_graph_without_graph_breaks():
    calls = _trace_calls()

    def every_loss(scores_list):
        return [fn(s, t) for (_, fn, _, t), s in zip(calls, scores_list)]

    backend = CompileCounter()
    compiled = torch.compile(every_loss, backend=backend, fullgraph=True, dynamic=True)
    outs = compiled([s for _, _, s, _ in calls])  # fullgraph=True: a graph break raises here
    assert backend.frame_count == 1
    assert dict(counters["graph_break"]) == {}
    expected = every_loss([s for _, _, s, _ in calls])
    for (label, *_), out, ref in zip(calls, outs, expected):
        # The traced graph runs the same ops eagerly (CompileCounter's backend): same values,
        # but eager "fused" may take a chunked or folded route that the graph does not.
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7, msg=label)


@pytest.mark.slow
def test_every_loss_compiled_with_inductor_matches_eager():
    """Every functional form on the reference path through inductor (dynamic shapes, float32,
    weights and ignored targets): equal to eager to 1e-6 relative -- inductor fuses and
    reorders the float32 reductions. Modules and the other reductions add no new code for
    inductor to lower (the trace above covers them); one graph with all of them took 230 s to
    compile on 2 cores. The fused path through inductor: the training step below."""
    calls = _calls(loss_forms(modules=False), [("mean", "weighted_ignore")])

    def every_loss(scores_list):
        return [fn(s, t) for (_, fn, _, t), s in zip(calls, scores_list)]

    compiled = torch.compile(every_loss, fullgraph=True, dynamic=True)
    outs = compiled([s for _, _, s, _ in calls])
    expected = every_loss([s for _, _, s, _ in calls])
    for (label, *_), out, ref in zip(calls, outs, expected):
        assert out.dtype == ref.dtype
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6, msg=label)
    assert dict(counters["graph_break"]) == {}


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b or "default")
def test_compiled_training_step_matches_eager(backend):
    """Model forward + one loss of each family (one with the fused path, where the family has
    one), compiled with fullgraph=True; backward runs the compiled backward graph; parameter
    gradients equal those of the eager step on the same backend."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 4, generator=g)
    batch = []
    for form in _one_form_per_family(backend):
        target = make_target(form, 12, generator=g, ignore_fraction=0.25)
        options = make_options(form, generator=g)
        batch.append((form.make(**options, **_backend(backend)), target))

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))

    def step(model, x):
        scores = model(x)
        return sum(fn(scores, t) for fn, t in batch)

    eager_model, compiled_model = make_model(), make_model()
    step(eager_model, x).backward()
    compiled_step = torch.compile(step, fullgraph=True)
    loss = compiled_step(compiled_model, x)
    loss.backward()
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    assert dict(counters["graph_break"]) == {}


@pytest.mark.slow
def test_gradient_accumulator_traces_without_graph_breaks():
    """acc.loss inside a compiled function (on the fused path where there is one): the
    recorded denominator and sum come out of the graph; the normalised gradient equals the
    full-batch one."""
    g = torch.Generator().manual_seed(8)
    form = _one_form_per_family(BACKENDS[-1])[0]
    scores = torch.randn(10, 3, generator=g)
    target = make_target(form, 10, generator=g, ignore_fraction=0.4)
    options = cast_options(make_options(form, generator=g), torch.float32)
    loss_fn = form.make(**options, **_backend(BACKENDS[-1]))
    acc = crossent.GradientAccumulator()

    def micro_step(s, t):
        return acc.loss(loss_fn, s, t)

    backend = CompileCounter()
    compiled = torch.compile(micro_step, backend=backend, fullgraph=True)
    s = scores.clone().requires_grad_(True)
    for part in (slice(0, 3), slice(3, 10)):
        compiled(s[part], target[part]).backward()
    mean = acc.normalize_(s)
    assert backend.frame_count >= 1 and dict(counters["graph_break"]) == {}
    ref = scores.clone().requires_grad_(True)
    full = loss_fn(ref, target)
    full.backward()
    torch.testing.assert_close(s.grad, ref.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mean, full.detach(), rtol=1e-6, atol=1e-7)
