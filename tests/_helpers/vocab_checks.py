"""What each rank runs in tests/test_vocab_parallel.py (imported by name in spawned processes).

Every rank builds the same whole float64 batch from a fixed seed, takes its slice of the classes
(uneven slices; with three ranks the middle one holds none), calls the loss with
``vocab_group=``, and computes the one-process reference (``backend="reference"``, autograd)
on the concatenated logits; the functions return the measured errors, the values every rank
returned and the collectives each call launched. The tests assert.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

import crossent
from crossent.linear._vocab import vocab_closed_form, vocab_layout
from crossent.losses import CE

# The collectives of torch.distributed, counted by name when called through the module (as
# crossent calls them). Lighter than tests._helpers.distributed.collectives (the profiler:
# about 0.3 s per block, and these checks count around 80 calls per rank).
_COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "gather",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
)


@contextlib.contextmanager
def collectives() -> Iterator[list[str]]:
    """The names of the ``torch.distributed`` collectives called inside the block."""
    names: list[str] = []
    originals = {name: getattr(dist, name) for name in _COLLECTIVES}

    def counting(name, fn):
        def call(*args, **kwargs):
            names.append(name)
            return fn(*args, **kwargs)

        return call

    for name, fn in originals.items():
        setattr(dist, name, counting(name, fn))
    try:
        yield names
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


# Classes per rank, by world size: uneven, and a rank without any class.
SLICES = {2: (3, 5), 3: (4, 0, 3)}
ROWS = 7
REDUCTIONS = ("none", "sum", "mean")


@dataclass(frozen=True)
class Case:
    id: str
    function: str
    target: str  # "index", "probs" or "binary"
    options: dict[str, Any] = field(default_factory=dict)
    # all-reduces of a reduced call ("none": the same, except 0 for the binary family)
    all_reduces: int = 2


def _cases() -> list[Case]:
    w, al, ig, s = "weight", "alpha", "ignore", "label_smoothing"
    ce, fl, p1 = "cross_entropy", "softmax_focal_loss", "poly1_cross_entropy"
    cases = [
        Case("ce-index", ce, "index"),
        Case("ce-index-weight-ignore", ce, "index", {w: 1, ig: 1}),
        Case("ce-index-smoothing", ce, "index", {s: 0.1}),
        Case("ce-index-weight-smoothing-ignore", ce, "index", {w: 1, s: 0.2, ig: 1}),
        Case("ce-probs", ce, "probs"),
        Case("ce-probs-weight-smoothing-ignore", ce, "probs", {w: 1, s: 0.1, ig: 1}),
        Case("focal-index", fl, "index", {"gamma": 2.0}),
        Case("focal-index-alpha-weight-ignore", fl, "index", {"gamma": 0.5, al: 1, w: 1, ig: 1}),
        Case("focal-index-smoothing", fl, "index", {"gamma": 2.0, s: 0.1, al: 1}, 3),
        Case("focal-probs", fl, "probs", {"gamma": 2.0, al: 1}, 3),
        Case("focal-probs-weight-ignore", fl, "probs", {"gamma": 1.5, w: 1, ig: 1}, 3),
        Case("poly1-index", p1, "index", {"epsilon": 1.0}),
        Case("poly1-index-weight-ignore", p1, "index", {"epsilon": 2.0, w: 1, ig: 1}),
        Case("poly1-index-smoothing", p1, "index", {"epsilon": 1.0, s: 0.1}, 3),
        Case("poly1-probs-ignore", p1, "probs", {"epsilon": -0.5, ig: 1}, 3),
        # the softmax options: softcap before everything, z-loss, per-sample weights
        Case(
            "ce-index-zloss-softcap-sampleweight-weight-ignore",
            ce,
            "index",
            {"z_loss": 0.1, "softcap": 5.0, "sample_weight": 1, w: 1, ig: 1},
        ),
        Case("ce-index-smoothing-zloss", ce, "index", {"z_loss": 0.1, s: 0.1}),
        Case(
            "ce-probs-zloss-sampleweight-ignore",
            ce,
            "probs",
            {"z_loss": 0.1, "sample_weight": 1, ig: 1},
        ),
        Case(
            "focal-index-zloss-softcap-alpha-weight-ignore",
            fl,
            "index",
            {"gamma": 2.0, "z_loss": 0.1, "softcap": 4.0, al: 1, w: 1, ig: 1},
        ),
        Case(
            "focal-probs-smoothing-zloss-sampleweight",
            fl,
            "probs",
            {"gamma": 2.0, s: 0.1, "z_loss": 0.1, "sample_weight": 1, "softcap": 6.0},
            3,
        ),
        Case(
            "poly1-index-smoothing-zloss-sampleweight-ignore",
            p1,
            "index",
            {"epsilon": 1.0, s: 0.1, "z_loss": 0.1, "sample_weight": 1, w: 1, ig: 1},
            3,
        ),
        Case("bce", "binary_cross_entropy_with_logits", "binary", {}, 1),
        Case(
            "bce-weight-posweight-ignore",
            "binary_cross_entropy_with_logits",
            "binary",
            {w: 1, "pos_weight": 1, ig: 1},
            1,
        ),
        Case("bce-smoothing", "binary_cross_entropy_with_logits", "binary", {s: 0.1}, 1),
        Case("bce-probs", "binary_cross_entropy", "binary-probs", {ig: 1}, 1),
        Case("focal-sigmoid", "sigmoid_focal_loss", "binary", {"gamma": 2.0, al: 1}, 1),
        Case("focal-sigmoid-ignore", "sigmoid_focal_loss", "binary", {"gamma": 0.5, ig: 1}, 1),
        Case("asl", "asymmetric_loss", "binary", {w: 1}, 1),
        Case("asl-noclip-ignore", "asymmetric_loss", "binary", {"clip": None, ig: 1}, 1),
        Case("poly1-focal", "poly1_focal_loss", "binary", {"epsilon": 1.0, ig: 1}, 1),
    ]
    return cases


CASES = _cases()


def _full_data(case: Case, n_classes: int, seed: int = 0):
    """The whole batch and options of ``case``: ``(logits, target, options, class_sliced)``
    where ``class_sliced`` names the tensors each rank slices along the classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, n_classes, generator=g, dtype=torch.float64) * 3
    binary = case.target.startswith("binary")
    options: dict[str, Any] = {}
    sliced = ["input"]
    if case.target == "index":
        target = torch.randint(0, n_classes, (ROWS,), generator=g)
        x[0, target[0]] += 40.0  # a saturated row: p_t rounds to 1 (1 - p_t from the others)
        if case.options.get("ignore"):
            target[[1, 4]] = -100
    elif case.target == "probs":
        target = torch.softmax(torch.randn(ROWS, n_classes, generator=g, dtype=torch.float64), 1)
        x[0, 2] += 40.0
        if case.options.get("ignore"):
            target[3] = -100.0  # a row filled with ignore_index is ignored
        sliced.append("target")
    else:
        target = (torch.rand(ROWS, n_classes, generator=g) < 0.4).to(torch.float64)
        if case.options.get("ignore"):
            target[torch.rand(ROWS, n_classes, generator=g) < 0.3] = -1.0
            options["ignore_index"] = -1
        if case.target == "binary-probs":
            x = torch.sigmoid(x)
        sliced.append("target")
    if not binary and case.options.get("ignore"):
        options["ignore_index"] = -100
    for key, value in case.options.items():
        if key == "ignore":
            continue
        if key == "sample_weight":  # one per sample: the same on every rank, never sliced
            options[key] = torch.rand(ROWS, generator=g, dtype=torch.float64) + 0.5
            continue
        if key in ("weight", "pos_weight", "alpha") and value == 1:
            if binary and key == "alpha":
                options[key] = 0.25
                continue
            vector = torch.rand(n_classes, generator=g, dtype=torch.float64) + 0.5
            options[key] = vector.expand(ROWS, n_classes) if binary and key == "weight" else vector
            sliced.append(key)
        else:
            options[key] = value
    return x, target, options, sliced


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest elementwise difference over the largest magnitude of ``expected``."""
    actual, expected = actual.detach(), expected.detach()
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().clamp_min(1e-300)
    return float((actual - expected).abs().max() / scale)


def _check_case(case: Case, rank: int, world: int, group) -> dict[str, Any]:
    sizes = SLICES[world]
    lo = sum(sizes[:rank])
    part = slice(lo, lo + sizes[rank])
    x, target, options, sliced = _full_data(case, sum(sizes))
    fn = getattr(crossent, case.function)
    out: dict[str, Any] = {}
    for reduction in REDUCTIONS:
        xr = x.clone().requires_grad_(True)
        ref = fn(xr, target, reduction=reduction, backend="reference", **options)
        ref.sum().backward()

        mine = {k: (v[..., part] if k in sliced else v) for k, v in options.items()}
        shard_target = target[:, part] if "target" in sliced else target
        xs = x[:, part].clone().requires_grad_(True)
        with collectives() as launched:
            value = fn(xs, shard_target, reduction=reduction, vocab_group=group, **mine)
        value.sum().backward()
        is_elementwise = case.target.startswith("binary") and reduction == "none"
        values = [value.detach()]
        if not is_elementwise:  # the shard's own elementwise loss: its size differs per rank
            values = [torch.empty_like(value) for _ in range(world)]
            dist.all_gather(values, value.detach().contiguous(), group=group)
        out[reduction] = {
            "value_error": _rel(value.detach(), ref.detach()[:, part] if is_elementwise else ref),
            "grad_error": _rel(xs.grad, xr.grad[:, part]),
            "same_on_every_rank": all(torch.equal(v, values[0]) for v in values),
            "dtype": value.dtype,
            "all_reduces": launched.count("all_reduce"),
            "collectives": len(launched),
        }
    return out


def _check_errors(rank: int, world: int, group) -> dict[str, str]:
    """The messages of the calls that must fail (every rank fails the same way)."""
    sizes = SLICES[world]
    x = torch.randn(4, sizes[rank], dtype=torch.float64)
    total = sum(sizes)
    calls = {
        "target_out_of_range": lambda: crossent.cross_entropy(
            x, torch.tensor([0, total, 1, 2]), vocab_group=group
        ),
        "negative_target": lambda: crossent.softmax_focal_loss(
            x, torch.tensor([0, -3, 1, 2]), vocab_group=group
        ),
        "reference_backend": lambda: crossent.cross_entropy(
            x, torch.tensor([0, 1, 2, 3]), vocab_group=group, backend="reference"
        ),
        "compiled_backend": lambda: crossent.sigmoid_focal_loss(
            x, torch.zeros_like(x), vocab_group=group, backend="compiled"
        ),
        "not_a_group": lambda: crossent.cross_entropy(
            x, torch.tensor([0, 1, 2, 3]), vocab_group=[0, 1]
        ),
        "weight_requires_grad": lambda: crossent.cross_entropy(
            x.requires_grad_(),
            torch.tensor([0, 1, 2, 3]),
            weight=torch.ones(sizes[rank], dtype=torch.float64, requires_grad=True),
            vocab_group=group,
        ),
    }
    messages = {}
    for name, call in calls.items():
        try:
            call()
            messages[name] = "no error"
        except (ValueError, TypeError) as exc:
            messages[name] = f"{type(exc).__name__}: {exc}"
    return messages


def _check_forms(rank: int, world: int, group) -> dict[str, float]:
    """Other ways in: a module, a (C,) sample, an (N, C, d) input, and the kernel-like closed
    form called on row chunks with a layout computed once."""
    sizes = SLICES[world]
    lo = sum(sizes[:rank])
    part = slice(lo, lo + sizes[rank])
    total = sum(sizes)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(ROWS, total, 2, generator=g, dtype=torch.float64)
    t = torch.randint(0, total, (ROWS, 2), generator=g)
    errors: dict[str, float] = {}

    # an (N, C, d) input: the class dimension is 1
    xr = x.clone().requires_grad_(True)
    ref = crossent.cross_entropy(xr, t, label_smoothing=0.1, backend="reference")
    ref.backward()
    xs = x[:, part].clone().requires_grad_(True)
    value = crossent.cross_entropy(xs, t, label_smoothing=0.1, vocab_group=group)
    value.backward()
    errors["nd_value"] = _rel(value.detach(), ref.detach())
    errors["nd_grad"] = _rel(xs.grad, xr.grad[:, part])

    # a module, on (N, C)
    x2, t2 = x[..., 0], t[:, 0]
    xr = x2.clone().requires_grad_(True)
    crossent.SoftmaxFocalLoss(gamma=2.0, backend="reference")(xr, t2).backward()
    xs = x2[:, part].clone().requires_grad_(True)
    module = crossent.SoftmaxFocalLoss(gamma=2.0, vocab_group=group)
    module(xs, t2).backward()
    errors["module_grad"] = _rel(xs.grad, xr.grad[:, part])

    # one sample of size (C,)
    xr = x2[0].clone().requires_grad_(True)
    ref = crossent.poly1_cross_entropy(xr, t2[0], backend="reference")
    ref.backward()
    xs = x2[0, part].clone().requires_grad_(True)
    value = crossent.poly1_cross_entropy(xs, t2[0], vocab_group=group)
    value.backward()
    errors["unbatched_value"] = _rel(value.detach(), ref.detach())
    errors["unbatched_grad"] = _rel(xs.grad, xr.grad[part])

    # the kernel-like closed form over row chunks, with the layout computed once
    options = CE.options_from(label_smoothing=0.1, weight=None, ignore_index=-100)
    layout = vocab_layout(group, sizes[rank])
    errors["layout"] = float((layout.start, layout.local, layout.total) != (lo, sizes[rank], total))
    fn = vocab_closed_form(CE.kernel, options, group, layout=layout)
    xr = x2.clone().requires_grad_(True)
    ref = crossent.cross_entropy(xr, t2, label_smoothing=0.1, reduction="sum", backend="reference")
    ref.backward()
    sums, grads = [], []
    with collectives() as launched:
        for rows in (slice(0, 3), slice(3, ROWS)):
            s, _, grad = fn(
                x2[rows, part],
                t2[rows],
                options,
                mean_denominator=None,
                reduce=True,
                need_grad=True,
            )
            sums.append(s)
            grads.append(grad)
    errors["chunks_value"] = _rel(sum(sums), ref.detach())
    errors["chunks_grad"] = _rel(torch.cat(grads), xr.grad[:, part])
    errors["chunks_all_reduces"] = float(launched.count("all_reduce"))
    return errors


# --------------------------------------------------------------------------------------------
# Fused linear + loss with vocab_group: each rank holds its rows of the head's weight
# --------------------------------------------------------------------------------------------

LINEAR_HIDDEN = 4
LINEAR_CHUNK = 3  # rows per block: ROWS = 7 rows run as three blocks
# (id, function, loss, target kind, options, all-reduces per block of a softmax loss);
# "weight": 1 is a class weight (sliced)
LINEAR_CASES = (
    (
        "ce-weight-ignore-smoothing",
        "linear_cross_entropy",
        None,
        "index",
        {"weight": 1, "ignore_index": -100, "label_smoothing": 0.1},
        2,
    ),
    ("ce-probs", "linear_cross_entropy", None, "probs", {}, 2),
    (
        "softmax-focal-smoothing",
        "linear_loss",
        "softmax_focal",
        "index",
        {"label_smoothing": 0.1},
        3,
    ),
    ("focal-sigmoid", "linear_loss", "focal", "binary", {"gamma": 2.0, "alpha": 0.25}, 0),
)


def _linear_data(kind: str, n_classes: int, options: dict[str, Any]):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, LINEAR_HIDDEN, generator=g, dtype=torch.float64)
    w = torch.randn(n_classes, LINEAR_HIDDEN, generator=g, dtype=torch.float64) * 2
    b = torch.randn(n_classes, generator=g, dtype=torch.float64)
    if kind == "index":
        target = torch.randint(0, n_classes, (ROWS,), generator=g)
        target[[1, 5]] = -100
    elif kind == "probs":
        target = torch.softmax(torch.randn(ROWS, n_classes, generator=g, dtype=torch.float64), 1)
    else:
        target = (torch.rand(ROWS, n_classes, generator=g) < 0.4).to(torch.float64)
    opts = dict(options)
    if opts.get("weight") == 1:
        opts["weight"] = torch.rand(n_classes, generator=g, dtype=torch.float64) + 0.5
    return x, w, b, target, opts


def _linear_case(case, reduction, world, group, part, **call) -> dict[str, Any]:
    """One fused linear + loss call with ``vocab_group`` against one process on the whole
    head: errors, and the collectives it launched."""
    _, function, loss, kind, options, _ = case
    x, w, b, target, opts = _linear_data(kind, sum(SLICES[world]), options)
    fn = getattr(crossent, function)
    extra = {} if loss is None else {"loss": loss}
    mine = {k: (v[part] if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    shard_target = target if kind == "index" else target[:, part]
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    ref = fn(xr, wr, target, linear_bias=br, reduction=reduction, **extra, **opts)
    ref.sum().backward()
    xs = x.clone().requires_grad_(True)
    ws = w[part].clone().requires_grad_(True)
    bs = b[part].clone().requires_grad_(True)
    with collectives() as launched:
        value = fn(
            xs,
            ws,
            shard_target,
            linear_bias=bs,
            reduction=reduction,
            vocab_group=group,
            **call,
            **extra,
            **mine,
        )
        value.sum().backward()
    elementwise = kind == "binary" and reduction == "none"
    values = [value.detach()]
    if not elementwise:
        values = [torch.empty_like(value) for _ in range(world)]
        dist.all_gather(values, value.detach().contiguous(), group=group)
    expected = ref.detach()[:, part] if elementwise else ref.detach()
    return {
        "value_error": _rel(value.detach(), expected),
        "input_grad_error": _rel(xs.grad, xr.grad),
        "weight_grad_error": _rel(ws.grad, wr.grad[part]),
        "bias_grad_error": _rel(bs.grad, br.grad[part]),
        "same_on_every_rank": all(torch.equal(v, values[0]) for v in values),
        "dtype": value.dtype,
        "all_reduces": launched.count("all_reduce"),
        "collectives": len(launched),
    }


def _check_linear(rank: int, world: int, group) -> dict[str, Any]:
    """``linear_cross_entropy`` / ``linear_loss`` with ``vocab_group``: each rank passes its
    rows of ``W`` and ``b`` (and its slice of class weights and dense targets), the whole
    replicated input; against one process on the concatenated head (autograd through the
    unfused reference). Several blocks per call (``batch_chunk_size``)."""
    sizes = SLICES[world]
    lo = sum(sizes[:rank])
    part = slice(lo, lo + sizes[rank])
    out: dict[str, Any] = {}
    for case in LINEAR_CASES:
        for reduction in REDUCTIONS:
            out[(case[0], reduction)] = _linear_case(
                case, reduction, world, group, part, batch_chunk_size=LINEAR_CHUNK
            )
    # no batch_chunk_size: every rank sizes its blocks by the largest slice (2 rows per block
    # here: four blocks of the 7 rows on every rank, also on one without classes) -- sized
    # by their own slices, the ranks would run different numbers of blocks and their
    # per-block collectives would not pair up
    from crossent.linear import _chunked

    saved = _chunked.BLOCK_ELEMENTS
    _chunked.BLOCK_ELEMENTS = 2 * max(sizes)
    try:
        for case in (LINEAR_CASES[0], LINEAR_CASES[-1]):
            out[("budget", case[0])] = _linear_case(case, "mean", world, group, part)
    finally:
        _chunked.BLOCK_ELEMENTS = saved
    # the module form on a (1, N, H) input without a bias, and a refused backend
    x, w, _, target, _ = _linear_data("index", sum(sizes), {})
    x, target = x.unsqueeze(0), target.unsqueeze(0)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    crossent.linear_cross_entropy(xr, wr, target, label_smoothing=0.1).backward()
    xs, ws = x.clone().requires_grad_(True), w[part].clone().requires_grad_(True)
    module = crossent.nn.LinearCrossEntropyLoss(
        label_smoothing=0.1, vocab_group=group, batch_chunk_size=2
    )
    module(xs, ws, target).backward()
    out["module"] = {
        "input_grad_error": _rel(xs.grad, xr.grad),
        "weight_grad_error": _rel(ws.grad, wr.grad[part]),
    }
    try:
        crossent.linear_cross_entropy(x, w[part], target, vocab_group=group, backend="compiled")
        out["compiled_backend"] = "no error"
    except ValueError as exc:
        out["compiled_backend"] = f"ValueError: {exc}"
    return out


def _checks(rank: int, world: int, group) -> dict[str, Any]:
    return {
        "cases": {case.id: _check_case(case, rank, world, group) for case in CASES},
        "errors": _check_errors(rank, world, group),
        "forms": _check_forms(rank, world, group),
        "linear": _check_linear(rank, world, group),
    }


def vocab_checks(rank: int, world: int) -> dict[str, Any]:
    """Four processes, one spawn (each costs seconds): ranks 0-2 as one vocab group of three
    (rank 3 waits), then {0, 1} and {2, 3} as two vocab groups of two, then the grid of
    :func:`grid_checks`. Returns ``{3: ..., 2: ..., "grid": ...}`` (no 3 on rank 3)."""
    if world != 4:
        raise ValueError(f"Expected 4 processes, but got {world}.")
    three = dist.new_group([0, 1, 2])  # every rank creates every group, in the same order
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    replicas = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    out: dict[Any, Any] = {}
    if rank < 3:
        out[3] = _checks(rank, 3, three)
    out[2] = _checks(rank % 2, 2, pairs[rank // 2])
    out["grid"] = grid_checks(rank, pairs[rank // 2], replicas[rank % 2])
    return out


# --------------------------------------------------------------------------------------------
# Four ranks: 2 data-parallel replicas x 2 vocab-parallel ranks, reduction="global_mean"
# --------------------------------------------------------------------------------------------

GRID_ROWS = (3, 5)  # rows of each replica
GRID_CLASSES = (2, 4)  # classes of each vocab rank
GRID_CASES = (
    ("cross_entropy", "index", {"weight": True, "ignore_index": -100}),
    ("softmax_focal_loss", "probs", {"gamma": 2.0}),
    ("binary_cross_entropy_with_logits", "binary", {"ignore_index": -1}),
)


def grid_checks(rank: int, vocab_group, dp_group) -> dict[str, Any]:
    """Rank ``r`` is vocab rank ``r % 2`` of replica ``r // 2``: vocab groups {0, 1} and
    {2, 3}, data-parallel groups {0, 2} and {1, 3}."""
    replica, vocab_rank = divmod(rank, 2)
    rows = slice(sum(GRID_ROWS[:replica]), sum(GRID_ROWS[: replica + 1]))
    classes = slice(sum(GRID_CLASSES[:vocab_rank]), sum(GRID_CLASSES[: vocab_rank + 1]))
    n, c = sum(GRID_ROWS), sum(GRID_CLASSES)
    out = {}
    for name, kind, opts in GRID_CASES:
        g = torch.Generator().manual_seed(11)
        x = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
        options = dict(opts)
        sliced_target = kind != "index"
        if kind == "index":
            target = torch.randint(0, c, (n,), generator=g)
            target[[0, 6]] = -100
        elif kind == "probs":
            target = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64), 1)
        else:
            target = (torch.rand(n, c, generator=g) < 0.5).to(torch.float64)
            target[torch.rand(n, c, generator=g) < 0.3] = -1.0
        weight = None
        if options.pop("weight", False):
            weight = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
        fn = getattr(crossent, name)
        xr = x.clone().requires_grad_(True)
        ref = fn(xr, target, weight=weight, backend="reference", **options)
        ref.backward()
        xs = x[rows, classes].clone().requires_grad_(True)
        shard_target = target[rows, classes] if sliced_target else target[rows]
        with collectives() as launched:
            value = fn(
                xs,
                shard_target,
                weight=None if weight is None else weight[classes],
                reduction="global_mean",
                process_group=dp_group,
                vocab_group=vocab_group,
                **options,
            )
        value.backward()
        # the default group (all four ranks): the vocab ranks' equal denominators cancel
        default = fn(
            xs.detach(),
            shard_target,
            weight=None if weight is None else weight[classes],
            reduction="global_mean",
            vocab_group=vocab_group,
            **options,
        )
        values = [torch.empty_like(value) for _ in range(2)]
        dist.all_gather(values, value.detach(), group=dp_group)
        out[name] = {
            # the replicas' values averaged: the mean of the whole batch
            "value_error": _rel(sum(values) / 2, ref.detach()),
            # DDP would average the replicas' gradients: each is 2x its share of the mean's
            "grad_error": _rel(xs.grad / 2, xr.grad[rows, classes]),
            "all_reduces": launched.count("all_reduce"),
            "default_group_error": _rel(default, value),
        }
    out["linear_cross_entropy"] = _grid_linear(rows, classes, vocab_group, dp_group)
    return out


def _grid_linear(rows: slice, classes: slice, vocab_group, dp_group) -> dict[str, Any]:
    """The fused linear + cross entropy in the same grid: each replica's rows of the input,
    each vocab rank's rows of the head; DDP's averages over the replicas against one process
    on the whole batch and head."""
    n, c = sum(GRID_ROWS), sum(GRID_CLASSES)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    w = torch.randn(c, 3, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    target[[1, 6]] = -100
    weight = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    crossent.linear_cross_entropy(xr, wr, target, weight=weight).backward()
    xs = x[rows].clone().requires_grad_(True)
    ws = w[classes].clone().requires_grad_(True)
    value = crossent.linear_cross_entropy(
        xs,
        ws,
        target[rows],
        weight=weight[classes],
        reduction="global_mean",
        process_group=dp_group,
        vocab_group=vocab_group,
        batch_chunk_size=2,
    )
    value.backward()
    grad_w = ws.grad.clone()
    dist.all_reduce(grad_w, group=dp_group)  # what DDP does, before its division by 2
    values = [torch.empty_like(value) for _ in range(2)]
    dist.all_gather(values, value.detach(), group=dp_group)
    ref = crossent.linear_cross_entropy(x, w, target, weight=weight)
    return {
        "value_error": _rel(sum(values) / 2, ref),
        "grad_error": max(_rel(xs.grad / 2, xr.grad[rows]), _rel(grad_w / 2, wr.grad[classes])),
    }
