"""What each rank runs in tests/test_distributed.py (imported by name in spawned processes).

Every rank builds the same whole batch from a fixed seed, takes its own slice of it, trains
one step of a small model through DDP with ``reduction="global_mean"``, and also computes the
single-process reference on the whole batch, so every comparison is made on one rank with no
data sent around. The functions return plain dicts of measured numbers; the tests assert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import crossent
from tests._helpers.cases import (
    BACKENDS,
    LossForm,
    backend_option,
    ignore_all,
    loss_forms,
    make_options,
    make_target,
)
from tests._helpers.distributed import collectives

FEATURES = 5


@dataclass(frozen=True)
class Scenario:
    name: str
    sizes: tuple[int, ...]  # samples per rank
    ignore_fraction: float = 0.3
    all_ignored_rank: int | None = None  # every target of this rank ignored
    weighted: bool = True
    explicit_group: bool = False  # pass process_group= instead of using the default group
    # The single-process reference and the DDP ranks run the same closed form, so that only
    # the reduction across ranks differs ("global_mean" never takes the small-input path,
    # whose different float32 roundings a parameter gradient's sums can magnify past 1e-6).
    backend: str | None = "fused"


SCENARIOS = (
    Scenario("uneven", (5, 11)),
    Scenario("rank1_all_ignored", (6, 4), all_ignored_rank=1),
    Scenario("rank1_empty", (7, 0)),
    Scenario("unweighted_no_ignore", (3, 9), ignore_fraction=0.0, weighted=False),
    Scenario("explicit_group", (8, 3), explicit_group=True),
    # the reference (autograd) path, for the losses that also have a fused one
    Scenario("uneven_reference", (5, 11), backend="reference"),
)
# micro-batch sizes per rank for the accumulation check: different counts and sizes per rank
MICRO_BATCHES = ((3, 5), (6, 1, 2))


def _data(form: LossForm, sizes: tuple[int, ...], scenario: Scenario, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, FEATURES, generator=g)
    target = make_target(form, n, generator=g, ignore_fraction=scenario.ignore_fraction)
    options = make_options(form, generator=g, weighted=scenario.weighted, ignore=True)
    options.update(backend_option(scenario.backend))
    if scenario.all_ignored_rank is not None:
        lo = sum(sizes[: scenario.all_ignored_rank])
        hi = lo + sizes[scenario.all_ignored_rank]
        target[lo:hi] = ignore_all(form, target[lo:hi])
    return x, target, options


def _model() -> torch.nn.Module:
    torch.manual_seed(1234)  # the same initial parameters on every rank and in the reference
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def _rel_error(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> dict[str, float]:
    """Norm-wise relative error per parameter tensor (the worst one), and elementwise max."""
    normwise = max(
        float((a - e).norm() / e.norm().clamp_min(1e-30)) for a, e in zip(actual, expected)
    )
    elementwise = max(
        float(((a - e).abs() / e.abs().clamp_min(1e-30)).max()) for a, e in zip(actual, expected)
    )
    return {"normwise": normwise, "elementwise": elementwise}


def _slice(rank: int, sizes: tuple[int, ...]) -> slice:
    lo = sum(sizes[:rank])
    return slice(lo, lo + sizes[rank])


def _ddp_step(form, x, target, options, rank, sizes, *, reduction, process_group=None):
    """One forward/backward of DDP on this rank's slice; returns (value, grads, collectives)."""
    model = DDP(_model())
    part = _slice(rank, sizes)
    scores = model(x[part])
    extra = {"process_group": process_group} if process_group is not None else {}
    loss_fn = form.make(reduction=reduction, **options, **extra)
    with collectives() as launched:
        loss = loss_fn(scores, target[part])
    loss.backward()
    return loss.detach(), _grads(model.module), launched


def _check_form(form: LossForm, scenario: Scenario, rank: int, world: int, seed: int, group):
    sizes = scenario.sizes
    x, target, options = _data(form, sizes, scenario, seed)

    reference = _model()
    ref_loss = form.make(reduction="mean", **options)(reference(x), target)
    ref_loss.backward()
    ref_grads = _grads(reference)

    value, grads, launched = _ddp_step(
        form,
        x,
        target,
        options,
        rank,
        sizes,
        reduction="global_mean",
        process_group=group if scenario.explicit_group else None,
    )
    values = [torch.zeros_like(value) for _ in range(world)]
    dist.all_gather(values, value)

    # Negative control: the per-rank "mean" that DDP users get by default.
    _, mean_grads, mean_launched = _ddp_step(
        form, x, target, options, rank, sizes, reduction="mean"
    )
    return {
        "grad_error": _rel_error(grads, ref_grads),
        "value_mean_over_ranks": float(torch.stack(values).double().mean()),
        "value_reference": float(ref_loss.detach()),
        "collectives": launched,
        "mean_collectives": mean_launched,
        "per_rank_mean_grad_error": _rel_error(mean_grads, ref_grads)["normwise"],
    }


def _check_accumulation(form: LossForm, rank: int, world: int, seed: int) -> dict[str, Any]:
    """GradientAccumulator under DDP: micro-batches of different sizes and counts per rank."""
    scenario = Scenario("accumulation", tuple(sum(m) for m in MICRO_BATCHES))
    sizes = scenario.sizes
    x, target, options = _data(form, sizes, scenario, seed)
    reference = _model()
    ref_loss = form.make(reduction="mean", **options)(reference(x), target)
    ref_loss.backward()

    model = DDP(_model())
    loss_fn = form.make(**options)
    acc = crossent.GradientAccumulator()
    part = _slice(rank, sizes)
    xs, ts = x[part], target[part]
    start = 0
    micro = MICRO_BATCHES[rank]
    for i, size in enumerate(micro):
        xb, tb = xs[start : start + size], ts[start : start + size]
        start += size
        if i < len(micro) - 1:
            with model.no_sync():  # gradients stay local until the last micro-batch
                acc.loss(loss_fn, model(xb), tb).backward()
        else:
            acc.loss(loss_fn, model(xb), tb).backward()
    with collectives() as launched:
        mean = acc.normalize_(model.parameters())
    return {
        "grad_error": _rel_error(_grads(model.module), _grads(reference)),
        "value": float(mean),
        "value_reference": float(ref_loss.detach()),
        "collectives": launched,
    }


def eager_checks(rank: int, world: int) -> dict[str, Any]:
    """Every loss form x every scenario, plus accumulation and the process-group errors."""
    group = dist.new_group(list(range(world)))  # same ranks, a different group object
    solo = dist.new_group([0])  # rank 1 is not a member
    results: dict[str, Any] = {"forms": {}, "accumulation": {}}
    for i, form in enumerate(loss_forms()):
        for j, scenario in enumerate(SCENARIOS):
            seed = 1000 * i + j
            results["forms"][form.id, scenario.name] = _check_form(
                form, scenario, rank, world, seed, group
            )
        results["accumulation"][form.id] = _check_accumulation(form, rank, world, 7000 + i)

    # A rank outside `process_group` gets a clear error; a member of a one-rank group gets "mean".
    x, y = torch.randn(4, 3), (torch.rand(4, 3) < 0.5).float()
    try:
        out = crossent.binary_cross_entropy_with_logits(
            x, y, reduction="global_mean", process_group=solo
        )
        results["solo"] = {
            "value": float(out),
            "mean": float(crossent.binary_cross_entropy_with_logits(x, y)),
        }
    except ValueError as e:
        results["solo"] = {"error": str(e)}
    dist.barrier()
    return results


def compiled_checks(rank: int, world: int) -> dict[str, Any]:
    """One function calling one loss of each family with "global_mean", compiled with
    fullgraph=True: values and logit gradients against eager, collectives per call.

    The collective lives in one place (crossent._reduction) for every loss, so one loss per
    family covers it; tests/test_compile.py compiles every loss in one process.
    """
    import torch._dynamo

    forms = list({f.spec.family: f for f in reversed(loss_forms(modules=False))}.values())
    g = torch.Generator().manual_seed(99)
    sizes = (6, 10)
    scenario = Scenario("compiled", sizes, backend=None)  # each backend below
    batch = []
    for i, form in enumerate(forms):
        _, target, options = _data(form, sizes, scenario, 500 + i)
        part = _slice(rank, sizes)
        for backend in BACKENDS if "backend" in form.spec.options() else (None,):
            scores = torch.randn(sizes[rank], 3, generator=g) * 3
            fn = form.make(reduction="global_mean", **options, **backend_option(backend))
            batch.append((fn, scores, target[part]))

    def all_losses(scores_list):
        return torch.stack([fn(s, t) for (fn, _, t), s in zip(batch, scores_list)])

    def value_and_grads(f):
        scores = [s.clone().requires_grad_(True) for _, s, _ in batch]
        with collectives() as launched:
            out = f(scores)
        out.sum().backward()
        return out.detach(), [s.grad for s in scores], launched

    torch._dynamo.reset()
    # aot_eager: dynamo (where a graph break or the collective's rewrite happens) and
    # AOTAutograd (functionalisation, the backward graph), without inductor's code generation,
    # which costs ~30 s more on two processes sharing 2 cores and is exercised for every loss
    # by tests/test_compile.py. (With the inductor backend this check passed as well.)
    compiled = torch.compile(all_losses, fullgraph=True, backend="aot_eager")
    eager_out, eager_grads, eager_launched = value_and_grads(all_losses)
    value_and_grads(compiled)  # compiles
    out, grads, launched = value_and_grads(compiled)
    return {
        "calls": len(batch),
        "forms": [f.id for f in forms],
        "value_error": float(((out - eager_out).abs() / eager_out.abs().clamp_min(1e-30)).max()),
        "grad_error": _rel_error(grads, eager_grads)["normwise"],
        "collectives": launched,
        "eager_collectives": eager_launched,
    }


def fail_on_rank_one(rank: int, world: int) -> None:
    """Rank 1 raises; rank 0 waits in a collective that rank 1 never joins."""
    if rank == 1:
        raise RuntimeError("rank 1 gives up")
    dist.barrier()
