"""Benchmarks of crossent's fused kernels against torch: the library behind ``crossent bench``
and the scripts in ``benchmarks/``.

For each loss and size every provider runs forward, backward and forward+backward, in
rounds: one timed iteration of each provider per round, after warm-up rounds (compiles
happen there), so that a change of machine load hits every provider alike. Each time is
reported as the median and the interquartile range over the rounds.

Providers: ``crossent`` (the automatic backend: compiled on CPU, Triton on CUDA),
``crossent-reference`` (crossent's torch-operations path), ``torch`` (``F.binary_cross_entropy
_with_logits`` / ``F.cross_entropy``), ``torch+compile`` (``torch.compile`` of the torch
function), for the sigmoid focal loss ``torchvision-style`` (torchvision's
``sigmoid_focal_loss`` formula, written out below) and ``torchvision-style+compile``, and for
the softmax focal loss ``eager-focal`` (the formula most code bases write: ``log_softmax``,
gather, ``-(1 - p_t)^gamma log p_t``) and ``eager-focal+compile``; for cross entropy on CUDA
also ``liger`` (Liger-Kernel's fused Triton cross entropy, the best-known published one), when
``liger_kernel`` is installed. Liger writes the gradient into its input in forward, so it gets
its own copy of the logits.

On CUDA each provider's time is also taken from the device's side: ``device_ms`` is the time
the GPU spent in kernels (and copies) per forward+backward, summed from a
``torch.profiler`` trace of a few steps -- what the loss costs inside a model, where the host
runs ahead and launch overhead is hidden. Divided into the fewest bytes the loss must move
(``min_bytes``: input and target read once, gradient written once), it gives the achieved
bandwidth, reported against a device-to-device copy measured in the same run (``copy_gbps``,
bytes read plus bytes written).

Memory, per provider, one forward+backward after the timing:

* ``peak_extra_bytes``: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated
  before; on Linux CPUs, the rise of the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` after freed heap memory is returned with ``malloc_trim``): every
  byte the step touched beyond what was resident before, ``input.grad`` included. Elsewhere
  ``None``.
* ``saved_extra_bytes``: the bytes autograd saved for backward (saved-tensor hooks), except
  those of the inputs themselves: exact on every platform.

Both are also given in units of one gradient buffer (``input.numel() * element size``).
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from crossent.registry import get_loss

__all__ = [
    "DEFAULT_CONFIG",
    "LOSSES",
    "QUICK_CONFIG",
    "append_csv",
    "machine_info",
    "read_csv",
    "render_markdown",
    "resolve_loss",
    "run",
    "run_small",
    "targets",
]

DEFAULT_CONFIG: dict[str, Any] = {
    "elementwise": {
        "losses": ["bce_with_logits", "sigmoid_focal"],
        "sizes": [1 << 20, 1 << 22, 1 << 24],
    },
    "cross_entropy": {
        "losses": ["cross_entropy", "softmax_focal"],
        "sizes": [[8192, 1000], [4096, 32000]],
    },
    # sizes on a GPU: a 4M-element loss takes microseconds there, so larger ones are added
    "cuda": {
        "elementwise": {"sizes": [1 << 22, 1 << 24, 1 << 26, 1 << 28]},
        "cross_entropy": {"sizes": [[8192, 1000], [4096, 32000], [8192, 128256]]},
    },
    "dtype": "float32",
    "warmup": 3,
    "repeats": 15,
}
QUICK_CONFIG: dict[str, Any] = {
    "elementwise": {"losses": ["bce_with_logits", "sigmoid_focal"], "sizes": [1 << 12]},
    "cross_entropy": {"losses": ["cross_entropy", "softmax_focal"], "sizes": [[64, 10]]},
    "cuda": {},
    "dtype": "float32",
    "warmup": 1,
    "repeats": 3,
}
FIELDS = [
    "run_id",
    "date",
    "machine",
    "cpu",
    "cores",
    "threads",
    "load",
    "device",
    "python",
    "torch",
    "triton",
    "crossent",
    "commit",
    "dtype",
    "loss",
    "size",
    "numel",
    "provider",
    "backend",
    "repeats",
    "fwd_ms",
    "fwd_p25_ms",
    "fwd_p75_ms",
    "bwd_ms",
    "bwd_p25_ms",
    "bwd_p75_ms",
    "total_ms",
    "total_p25_ms",
    "total_p75_ms",
    "grad_bytes",
    "peak_extra_bytes",
    "peak_method",
    "saved_extra_bytes",
    "device_ms",
    "min_bytes",
    "copy_gbps",
]


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------


def torchvision_style_focal(
    x: torch.Tensor, y: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25
) -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss's formula (reduction="mean"), as it is written there."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * y + (1 - alpha) * (1 - y)
        loss = alpha_t * loss
    return loss.mean()


def eager_softmax_focal(x: torch.Tensor, t: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """The softmax focal loss as most code bases write it (reduction="mean"): ``1 - p_t``
    from the rounded ``p_t``, every step a separate kernel kept alive for backward."""
    log_p_t = F.log_softmax(x, dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
    p_t = log_p_t.exp()
    return (-((1 - p_t) ** gamma) * log_p_t).mean()


def _liger(backend: str | None) -> Callable | None:
    """Liger-Kernel's cross entropy (CUDA only), or ``None`` where it is not installed."""
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except ImportError:
        return None
    return lambda x, t: liger_cross_entropy(x, t)


_COMPILED: dict[str, Callable] = {}


def _compiled(name: str, fn: Callable) -> Callable:
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=True)
    return _COMPILED[name]


@dataclass(frozen=True)
class Loss:
    name: str
    family: str  # "elementwise" or "cross_entropy"
    # provider -> make(backend): the function to time, or None where it is not available
    providers: dict[str, Callable[[str | None], Callable | None]] = field(repr=False)
    cuda_only: frozenset[str] = frozenset()  # providers that run only on CUDA tensors
    mutates_input: frozenset[str] = frozenset()  # providers that write into their input


def _crossent(loss: str, **options: Any) -> Callable[[str | None], Callable]:
    """crossent's loss ``loss`` (a registry name), from logits, with ``options``."""

    def make(backend: str | None) -> Callable:
        fn = get_loss(loss).logits
        return lambda x, y: fn(x, y, backend=backend, **options)

    return make


def _crossent_reference(loss: str, **options: Any) -> Callable[[str | None], Callable]:
    return lambda backend: _crossent(loss, **options)("reference")


def _fixed(fn: Callable) -> Callable[[str | None], Callable]:
    return lambda backend: fn


LOSSES: dict[str, Loss] = {
    "bce_with_logits": Loss(
        "bce_with_logits",
        "elementwise",
        {
            "crossent": _crossent("bce"),
            "crossent-reference": _crossent_reference("bce"),
            "torch": _fixed(F.binary_cross_entropy_with_logits),
            "torch+compile": lambda backend: _compiled("bce", F.binary_cross_entropy_with_logits),
        },
    ),
    "sigmoid_focal": Loss(
        "sigmoid_focal",
        "elementwise",
        {
            "crossent": _crossent("focal", gamma=2.0, alpha=0.25),
            "crossent-reference": _crossent_reference("focal", gamma=2.0, alpha=0.25),
            "torchvision-style": _fixed(torchvision_style_focal),
            "torchvision-style+compile": lambda backend: _compiled(
                "focal", torchvision_style_focal
            ),
        },
    ),
    "cross_entropy": Loss(
        "cross_entropy",
        "cross_entropy",
        {
            "crossent": _crossent("ce"),
            "crossent-reference": _crossent_reference("ce"),
            "torch": _fixed(F.cross_entropy),
            "torch+compile": lambda backend: _compiled("ce", F.cross_entropy),
            "liger": _liger,
        },
        cuda_only=frozenset({"liger"}),
        mutates_input=frozenset({"liger"}),
    ),
    "softmax_focal": Loss(
        "softmax_focal",
        "cross_entropy",
        {
            "crossent": _crossent("softmax_focal", gamma=2.0),
            "crossent-reference": _crossent_reference("softmax_focal", gamma=2.0),
            "eager-focal": _fixed(eager_softmax_focal),
            "eager-focal+compile": lambda backend: _compiled("softmax_focal", eager_softmax_focal),
        },
    ),
}
# Every case measures a loss of the registry; its key is one of that loss's registered names.
for _key in LOSSES:
    get_loss(_key)


def resolve_loss(name: str) -> str:
    """The benchmark case of a loss named by its key here or by any registry name or alias
    (``"focal"``, ``"sigmoid_focal_loss"``); ValueError naming the cases otherwise."""
    if name in LOSSES:
        return name
    definition = get_loss(name)  # raises for a name the registry does not know
    for key in LOSSES:
        if get_loss(key) is definition:
            return key
    raise ValueError(
        f"crossent bench has no case for the loss {definition.name!r}; its cases measure: "
        f"{', '.join(LOSSES)}."
    )


# The provider each speed-up is measured against.
BASELINE = {
    "bce_with_logits": "torch",
    "sigmoid_focal": "torchvision-style",
    "cross_entropy": "torch",
    "softmax_focal": "eager-focal",
}


def _inputs(loss: Loss, size: Any, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    if loss.family == "elementwise":
        n = int(size)
        x = torch.randn(n, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
        y = (torch.rand(n, generator=g) < 0.1).to(device=device, dtype=dtype)
        return x.requires_grad_(True), y
    n, c = (int(v) for v in size)
    x = torch.randn(n, c, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    t = torch.randint(0, c, (n,), generator=g).to(device)
    return x.requires_grad_(True), t


def _size_label(size: Any) -> str:
    if isinstance(size, (list, tuple)):
        return "x".join(str(int(v)) for v in size)
    n = int(size)
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(fn: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device):
    """One forward+backward; returns the forward and backward seconds."""
    x.grad = None
    _sync(device)
    t0 = time.perf_counter()
    loss = fn(x, y)
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def _libc_trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed heap memory stays resident
        pass


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def device_ms(
    fn: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device, steps: int = 10
) -> float | None:
    """Milliseconds the GPU spends per forward+backward: the kernels and copies of ``steps``
    steps in a ``torch.profiler`` trace, summed, over ``steps``. ``None`` off CUDA or where the
    profiler records no device activity."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    _step(fn, x, y, device)  # nothing new to load or compile inside the trace
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            _step(fn, x, y, device)
    cuda = torch.autograd.DeviceType.CUDA
    total_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == cuda)
    x.grad = None
    return total_us / steps / 1e3 if total_us > 0 else None


def copy_gbps(device: torch.device, nbytes: int = 1 << 30, repeats: int = 20) -> float | None:
    """A device-to-device copy's bandwidth in GB/s, bytes read plus bytes written: the
    practical ceiling a loss's achieved bandwidth is compared with. ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1e3 / repeats
    del src, dst
    return 2 * nbytes / seconds / 1e9


def min_bytes(x: torch.Tensor, y: torch.Tensor) -> int:
    """The fewest bytes a loss and its gradient must move: input and target read once, the
    gradient (the input's size) written once."""
    return 2 * x.numel() * x.element_size() + y.numel() * y.element_size()


def peak_extra_bytes(
    fn: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[int | None, str]:
    """Peak memory of one forward+backward beyond what was allocated before; see the module
    docstring for how. Returns ``(bytes or None, method)``."""
    x.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn(x, y).backward()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, "cuda.max_memory_allocated"
    if device.type != "cpu" or not os.path.exists("/proc/self/clear_refs"):
        return None, "unavailable"
    _libc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (the peak resident set) to the current VmRSS
        base = _proc_status("VmRSS")
    except (OSError, KeyError):
        return None, "unavailable"
    fn(x, y).backward()
    return max(_proc_status("VmHWM") - base, 0), "VmHWM"


def saved_extra_bytes(fn: Callable, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes autograd keeps for backward, except the inputs' own storage."""
    inputs = {x.untyped_storage().data_ptr(), y.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in inputs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    x.grad = None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(x, y)
    loss.backward()
    x.grad = None
    return sum(seen.values())


def _quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    ms = sorted(v * 1e3 for v in values)
    if len(ms) == 1:
        return ms[0], ms[0], ms[0]
    q = statistics.quantiles(ms, n=4, method="inclusive")
    return statistics.median(ms), q[0], q[2]


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    import crossent

    commit = ""
    try:  # the package's revision, when it is a git checkout ("-dirty" if its code is edited;
        # the results files the benchmarks append to do not count)
        import subprocess

        here = Path(__file__).resolve().parent

        def git(*args: str) -> str:
            run = subprocess.run(
                ["git", *args], cwd=here, capture_output=True, text=True, timeout=5
            )
            return run.stdout.strip() if run.returncode == 0 else ""

        commit = git("rev-parse", "--short", "HEAD")
        if commit and git("status", "--porcelain", "--untracked-files=no", "--", "."):
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    name = platform.node()
    if device.type == "cuda":
        name = f"{name} / {torch.cuda.get_device_name(device)}"
    try:  # other work on the machine: the 1-minute load average when the run starts
        load = f"{os.getloadavg()[0]:.2f}"
    except (OSError, AttributeError):
        load = ""
    return {
        "machine": name,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load": load,
        "device": device.type,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "crossent": crossent.__version__,
        "commit": commit,
    }


def run(
    config: dict[str, Any] | None = None,
    *,
    families: Iterable[str] = ("elementwise", "cross_entropy"),
    losses: Iterable[str] | None = None,
    providers: Iterable[str] | None = None,
    backend: str | None = None,
    device: str | torch.device | None = None,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark described by ``config`` (:data:`DEFAULT_CONFIG` by default) and return
    one row per (loss, size, provider), with the :data:`FIELDS` of the CSV.

    ``losses`` / ``providers`` restrict what runs (names as in :data:`LOSSES`); ``backend`` is
    passed to the ``crossent`` provider (``None``: automatic); ``device`` defaults to CUDA when
    available.
    """
    config = {**DEFAULT_CONFIG, **(config or {})}
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":  # the GPU's sizes, where the config gives them
        for family, override in (config.get("cuda") or {}).items():
            if config.get(family):
                config[family] = {**config[family], **override}
    dtype = getattr(torch, str(config.get("dtype", "float32")))
    warmup, repeats = int(config["warmup"]), int(config["repeats"])
    wanted_losses = None if losses is None else {resolve_loss(name) for name in losses}
    wanted_providers = None if providers is None else set(providers)
    info = machine_info(device)
    info["copy_gbps"] = copy_gbps(device)
    stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    run_id = f"{stamp.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
    rows = []
    for family in families:
        spec = config.get(family)
        if not spec:
            continue
        for loss_name in spec["losses"]:
            if wanted_losses is not None and loss_name not in wanted_losses:
                continue
            loss = LOSSES[loss_name]
            chosen = {}
            for p, make in loss.providers.items():
                if wanted_providers is not None and p not in wanted_providers:
                    continue
                if p in loss.cuda_only and device.type != "cuda":
                    continue
                fn = make(backend)
                if fn is not None:  # None: not installed
                    chosen[p] = fn
            for size in spec["sizes"]:
                x, y = _inputs(loss, size, dtype, device)
                # a provider that writes into its input gets a copy of its own
                inputs = {
                    p: (x.detach().clone().requires_grad_(True) if p in loss.mutates_input else x)
                    for p in chosen
                }
                label = _size_label(size)
                if progress:
                    progress(f"{loss_name} {label}: {', '.join(chosen)}")
                times: dict[str, list[tuple[float, float]]] = {p: [] for p in chosen}
                for round_ in range(warmup + repeats):
                    if round_ == warmup:
                        # crossent's "auto" compiles in the background during warm-up: the
                        # timed rounds measure the compiled graphs, the steady state
                        from crossent.kernels import wait_for_compiles

                        wait_for_compiles()
                    for p, fn in chosen.items():
                        step = _step(fn, inputs[p], y, device)
                        if round_ >= warmup:
                            times[p].append(step)
                for p, fn in chosen.items():
                    xp = inputs[p]
                    fwd = [a for a, _ in times[p]]
                    bwd = [b for _, b in times[p]]
                    total = [a + b for a, b in times[p]]
                    row = {**info, "run_id": run_id, "date": stamp.isoformat()}
                    row.update(
                        dtype=str(dtype).replace("torch.", ""),
                        loss=loss_name,
                        size=label,
                        numel=x.numel(),
                        provider=p,
                        backend=_resolved_backend(p, backend, x, y),
                        repeats=repeats,
                        grad_bytes=x.numel() * x.element_size(),
                    )
                    for key, values in (("fwd", fwd), ("bwd", bwd), ("total", total)):
                        med, lo, hi = _quantiles(values)
                        row[f"{key}_ms"], row[f"{key}_p25_ms"], row[f"{key}_p75_ms"] = med, lo, hi
                    row["device_ms"] = device_ms(fn, xp, y, device)
                    row["min_bytes"] = min_bytes(x, y)
                    if memory:
                        row["peak_extra_bytes"], row["peak_method"] = peak_extra_bytes(
                            fn, xp, y, device
                        )
                        row["saved_extra_bytes"] = saved_extra_bytes(fn, xp, y)
                    else:
                        row["peak_extra_bytes"], row["peak_method"] = None, "skipped"
                        row["saved_extra_bytes"] = None
                    rows.append(row)
                del x, y, inputs
                gc.collect()
    return rows


def _resolved_backend(provider: str, backend: str | None, x: torch.Tensor, y: torch.Tensor) -> str:
    if provider == "crossent-reference":
        return "reference"
    if provider != "crossent":
        return ""
    from crossent.kernels import select_backend

    return select_backend(backend, x, y)


# --------------------------------------------------------------------------------------------
# CSV and Markdown
# --------------------------------------------------------------------------------------------


def append_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Append rows to a CSV file (the header is written when the file is new)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != FIELDS:  # written before a column was added: rewrite it with every column
            old = read_csv(path)
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
                writer.writeheader()
                for row in old:
                    writer.writerow({k: _csv_value(row.get(k)) for k in FIELDS})
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in FIELDS})


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1 else f"{value:.4g}"
    return value


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in FIELDS:
            if (key.endswith("_ms") or key == "copy_gbps") and row.get(key):
                row[key] = float(row[key])
            elif key in (
                "numel",
                "grad_bytes",
                "peak_extra_bytes",
                "saved_extra_bytes",
                "repeats",
                "min_bytes",
            ):
                row[key] = int(float(row[key])) if row.get(key) else None
    return rows


def _find(rows, loss, size, provider):
    for row in rows:
        if row["loss"] == loss and row["size"] == size and row["provider"] == provider:
            return row
    return None


def bandwidth_gbps(row: dict[str, Any]) -> float | None:
    """A row's achieved bandwidth: its fewest bytes over its device time (CUDA rows)."""
    if not row.get("device_ms") or not row.get("min_bytes"):
        return None
    return row["min_bytes"] / (row["device_ms"] / 1e3) / 1e9


# The elementwise losses' bandwidth target is checked from this size on: smaller inputs (48 MB
# at 4M elements) stay in a GPU's L2 cache between steps, which measures the cache.
BANDWIDTH_MIN_NUMEL = 1 << 24


def _gpu_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if row["provider"] != "crossent":
            continue
        gbps, copy = bandwidth_gbps(row), row.get("copy_gbps")
        if LOSSES[row["loss"]].family == "elementwise":
            if gbps is None or not copy or row["numel"] < BANDWIDTH_MIN_NUMEL:
                continue
            out.append(
                {
                    "target": f"{row['loss']} {row['size']}: crossent bandwidth, fwd+bwd",
                    "wanted": ">= 80% of a copy's",
                    "measured": f"{gbps:.0f} GB/s = {gbps / copy:.0%} of {copy:.0f} GB/s "
                    f"({row['device_ms']:.3f} ms on the device)",
                    "met": gbps >= 0.8 * copy,
                }
            )
            continue
        torch_row = _find(rows, row["loss"], row["size"], "torch")
        liger = _find(rows, row["loss"], row["size"], "liger")
        if torch_row is None or liger is None:
            continue
        for key, what in (("total_ms", "wall clock"), ("device_ms", "device time")):
            if not (row.get(key) and liger.get(key) and torch_row.get(key)):
                continue
            ours, theirs = torch_row[key] / row[key], torch_row[key] / liger[key]
            out.append(
                {
                    "target": f"{row['loss']} {row['size']}: speed-up over torch, {what}",
                    "wanted": f">= liger's ({theirs:.2f}x)",
                    "measured": f"{ours:.2f}x ({row[key]:.3f} vs liger {liger[key]:.3f} ms)",
                    "met": ours >= theirs,
                }
            )
    return out


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The performance targets, checked on one run's rows (forward+backward medians): the CPU
    speed-ups on a CPU run, bandwidth and the comparison with Liger-Kernel on a CUDA run, peak
    memory on both."""
    checks = [
        ("sigmoid_focal", "4M", "torchvision-style", 6.0),
        ("sigmoid_focal", "4M", "torchvision-style+compile", 2.0),
        ("bce_with_logits", "4M", "torch", 2.5),
        ("cross_entropy", "8192x1000", "torch", 2.5),
    ]
    on_cuda = bool(rows) and rows[0].get("device") == "cuda"
    out = _gpu_targets(rows) if on_cuda else []
    for loss, size, baseline, wanted in [] if on_cuda else checks:
        ours, base = _find(rows, loss, size, "crossent"), _find(rows, loss, size, baseline)
        if ours is None or base is None:
            continue
        ratio = base["total_ms"] / ours["total_ms"]
        out.append(
            {
                "target": f"{loss} {size}: crossent vs {baseline}, fwd+bwd",
                "wanted": f">= {wanted:g}x",
                "measured": f"{ratio:.2f}x ({ours['total_ms']:.2f} vs {base['total_ms']:.2f} ms)",
                "met": ratio >= wanted,
            }
        )
    for row in rows:
        if row["provider"] != "crossent" or row.get("peak_extra_bytes") in (None, ""):
            continue
        if row["numel"] < 1 << 20:  # page-sized noise dominates small buffers
            continue
        units = row["peak_extra_bytes"] / row["grad_bytes"]
        out.append(
            {
                "target": f"{row['loss']} {row['size']}: crossent peak extra memory",
                "wanted": "<= 1 gradient buffer",
                "measured": f"{units:.2f} gradient buffers ({row['peak_method']})",
                # 2% slack: a few pages of allocator bookkeeping around a buffer of MBs
                "met": units <= 1.02,
            }
        )
    return out


def _fmt_ms(row: dict[str, Any], key: str) -> str:
    med, lo, hi = row[f"{key}_ms"], row[f"{key}_p25_ms"], row[f"{key}_p75_ms"]
    return f"{med:.2f} ({lo:.2f}-{hi:.2f})"


def _fmt_units(value: Any, grad_bytes: int) -> str:
    if value in (None, ""):
        return "-"
    return f"{int(value) / grad_bytes:.2f}"


def _latest_runs(by_run: dict[str, list[dict[str, Any]]], runs: int) -> list[str]:
    """The newest run of each set of losses (one per benchmark script) on each kind of device,
    then the newest others, at most ``runs`` in all (but every such newest run), newest
    first."""
    chosen, seen = [], set()
    for run_id in sorted(by_run, reverse=True):
        first = by_run[run_id][0]
        losses = (frozenset(row["loss"] for row in by_run[run_id]), first.get("device"))
        if losses not in seen:
            seen.add(losses)
            chosen.append(run_id)
    runs = max(runs, len(chosen))
    for run_id in sorted(by_run, reverse=True):
        if run_id not in chosen:
            chosen.append(run_id)
    return sorted(chosen[:runs], reverse=True)


def render_markdown(rows: Sequence[dict[str, Any]], *, command: str = "", runs: int = 3) -> str:
    """A Markdown report: the newest run of each benchmark (then other recent runs), one table
    per run with the performance targets checked, and the targets' history over every run."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row)
    lines = [
        "# crossent benchmark results",
        "",
        "Forward, backward and forward+backward times: median over the timed rounds, with the",
        "interquartile range in parentheses, in milliseconds; every provider runs once per round,",
        "side by side. *Speed-up*: the baseline's forward+backward median over this provider's",
        "(baseline: torch's own function; for the focal losses the eager formula: torchvision's",
        "for the sigmoid one, the common log_softmax form for the softmax one).",
        "*Peak extra*: the peak memory of one forward+backward beyond what was allocated",
        "before (``input.grad`` included), in gradient buffers (``numel x 4`` bytes in",
        "float32); on CPU the rise of the process's peak resident set (VmHWM), on CUDA",
        "`torch.cuda.max_memory_allocated`. *Saved*: what autograd keeps for backward besides",
        "the inputs, in gradient buffers (exact, from saved-tensor hooks). Produced by",
        "`crossent.bench` (see `benchmarks/README.md`); the CSV next to this file holds every run.",
        "Reproduce with `python benchmarks/bench_elementwise.py` and",
        "`python benchmarks/bench_cross_entropy.py` (sizes in `benchmarks/config.json`).",
        "",
    ]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    for run_id in _latest_runs(by_run, runs):
        run_rows = by_run[run_id]
        first = run_rows[0]
        lines += [
            f"## Run {run_id}",
            "",
            f"{first['machine']}; {first['cpu']}, {first['cores']} cores, torch threads "
            f"{first['threads']}, load average {first.get('load') or '?'} at the start; "
            f"device {first['device']}; python {first['python']}, torch "
            f"{first['torch']}, triton {first['triton'] or '-'}; crossent {first['crossent']} "
            f"({first.get('commit') or 'no git revision'}); {first['dtype']}; "
            f"{first['repeats']} timed rounds.",
            "",
        ]
        on_cuda = first.get("device") == "cuda"
        device_cols = ""
        if on_cuda:
            copy = first.get("copy_gbps")
            lines += [
                "*Device ms*: the GPU's own time per forward+backward (kernels and copies, from "
                "a profiler trace); *speed-up (device)* its ratio to the baseline's; *GB/s*: the "
                "fewest bytes the loss must move over the device time, against a device-to-"
                f"device copy at {copy:.0f} GB/s in this run."
                if copy
                else "",
                "",
            ]
            device_cols = " device ms | speed-up (device) | GB/s |"
        lines += [
            "| loss | size | provider | backend | forward ms | backward ms | fwd+bwd ms "
            "| speed-up |" + device_cols + " peak extra | saved |",
            "|---|---|---|---|---|---|---|---|" + "---|" * (3 if on_cuda else 0) + "---|---|",
        ]
        for row in run_rows:
            base = _find(run_rows, row["loss"], row["size"], BASELINE[row["loss"]])
            speed = f"{base['total_ms'] / row['total_ms']:.2f}x" if base else "-"
            device = ""
            if on_cuda:
                dev = row.get("device_ms")
                dev_speed = (
                    f"{base['device_ms'] / dev:.2f}x"
                    if base and dev and base.get("device_ms")
                    else "-"
                )
                gbps = bandwidth_gbps(row)
                device = (
                    f" {dev:.3f} |" if dev else " - |"
                ) + f" {dev_speed} | {f'{gbps:.0f}' if gbps else '-'} |"
            lines.append(
                f"| {row['loss']} | {row['size']} | {row['provider']} | {row['backend'] or '-'} "
                f"| {_fmt_ms(row, 'fwd')} | {_fmt_ms(row, 'bwd')} | {_fmt_ms(row, 'total')} "
                f"| {speed} |{device} "
                f"{_fmt_units(row.get('peak_extra_bytes'), row['grad_bytes'])} "
                f"| {_fmt_units(row.get('saved_extra_bytes'), row['grad_bytes'])} |"
            )
        checks = targets(run_rows)
        if checks:
            lines += ["", "Performance targets on this run:", ""]
            lines += ["| target | wanted | measured | met |", "|---|---|---|---|"]
            for c in checks:
                met = "yes" if c["met"] else "**no**"
                lines.append(f"| {c['target']} | {c['wanted']} | {c['measured']} | {met} |")
        lines.append("")
    history = [
        (run_id, c)
        for run_id in sorted(by_run)
        for c in targets(by_run[run_id])
        if "fwd+bwd" in c["target"]
    ]
    if len(history) > len({c["target"] for _, c in history}):
        lines += [
            "## Speed targets over every run",
            "",
            "The same ratios from each run in `results.csv`, oldest first: their spread is the",
            "run-to-run variation of the machine. Other work on shared cores shows in the load",
            "average at each run's start; a loaded machine favours the fused kernels (one pass",
            "instead of many), so only low-load runs measure the code. On the project's 2-core",
            "VM the same code also runs at one of two speeds per process, up to 2x apart (seen",
            "for cross entropy at 8192 x 1000 with one thread too, independent of page faults):",
            "a placement effect of the machine that a single run cannot average out.",
            "",
            "| run | commit | load | target | wanted | measured | met |",
            "|---|---|---|---|---|---|---|",
        ]
        for run_id, c in history:
            met = "yes" if c["met"] else "no"
            first = by_run[run_id][0]
            lines.append(
                f"| {run_id} | {first.get('commit') or '-'} | {first.get('load') or '?'} "
                f"| {c['target']} | {c['wanted']} | {c['measured']} | {met} |"
            )
        lines.append("")
    return "\n".join(lines)


def load_config(path: str | Path | None, *, quick: bool = False) -> dict[str, Any]:
    """The benchmark configuration: a JSON file's, else the built-in default (or quick) one."""
    if path is None:
        return dict(QUICK_CONFIG if quick else DEFAULT_CONFIG)
    with Path(path).open() as f:
        config = json.load(f)
    if quick:
        config = {**config, **QUICK_CONFIG}
    return config


# --------------------------------------------------------------------------------------------
# Fused linear + loss (``crossent bench --family linear``, benchmarks/bench_linear.py)
# --------------------------------------------------------------------------------------------
#
# A classifier head and its loss: ``loss(F.linear(x, W), t)`` for large label spaces, where
# the (N, V) logits and their gradient dominate a step's memory. One forward+backward of
# ``x`` (N, H) and ``W`` (V, H), both requiring gradients; providers run in turn in every
# round as above. Peak extra memory as :func:`peak_extra_bytes` (VmHWM on Linux CPUs,
# ``max_memory_allocated`` on CUDA), the gradients of x and W included.

LINEAR_CONFIG: dict[str, Any] = {
    "cases": [
        {"loss": "cross_entropy", "n": 4096, "h": 512, "v": 32000},
        {"loss": "sigmoid_focal", "n": 2048, "h": 256, "v": 50000},
    ],
    "dtype": "float32",
    "warmup": 1,
    "repeats": 3,
}
LINEAR_QUICK_CONFIG: dict[str, Any] = {
    "cases": [
        {"loss": "cross_entropy", "n": 64, "h": 16, "v": 300},
        {"loss": "sigmoid_focal", "n": 32, "h": 16, "v": 200},
    ],
    "dtype": "float32",
    "warmup": 1,
    "repeats": 2,
}
# torch's chunked path with the block size its documentation's example uses
TORCH_CHUNK = 512
LINEAR_SECTION = ("<!-- linear: written by benchmarks/bench_linear.py -->", "<!-- /linear -->")


def _linear_providers(loss: str, backend: str | None) -> dict[str, Callable]:
    import crossent

    if loss == "cross_entropy":
        chunked = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=TORCH_CHUNK)
        return {
            "crossent-linear": lambda x, w, t: crossent.linear_cross_entropy(
                x, w, t, backend=backend
            ),
            f"torch-chunked-{TORCH_CHUNK}": lambda x, w, t: F.linear_cross_entropy(
                x, w, t, options=chunked
            ),
            "unfused-torch": lambda x, w, t: F.cross_entropy(F.linear(x, w), t),
        }
    if loss == "sigmoid_focal":
        return {
            "crossent-linear": lambda x, w, t: crossent.linear_loss(
                x, w, t, loss="focal", gamma=2.0, alpha=0.25, backend=backend
            ),
            "unfused-crossent": lambda x, w, t: crossent.sigmoid_focal_loss(
                F.linear(x, w), t, gamma=2.0, alpha=0.25, backend=backend
            ),
            "unfused-torchvision-style": lambda x, w, t: torchvision_style_focal(F.linear(x, w), t),
        }
    raise ValueError(
        f'Expected a linear benchmark loss "cross_entropy" or "sigmoid_focal", but got {loss!r}.'
    )


def _linear_inputs(case: dict[str, Any], dtype: torch.dtype, device: torch.device):
    g = torch.Generator().manual_seed(0)
    n, h, v = int(case["n"]), int(case["h"]), int(case["v"])
    x = torch.randn(n, h, generator=g).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(v, h, generator=g) / h**0.5).to(device=device, dtype=dtype).requires_grad_()
    if case["loss"] == "cross_entropy":
        t = torch.randint(0, v, (n,), generator=g).to(device)
    else:  # multi-label: about 5 positives per row
        t = (torch.rand(n, v, generator=g) < 5.0 / v).to(device=device, dtype=dtype)
    return x, w, t


def _linear_step(fn: Callable, x, w, t, device: torch.device) -> tuple[float, float]:
    x.grad = w.grad = None
    _sync(device)
    t0 = time.perf_counter()
    loss = fn(x, w, t)
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def _linear_peak(fn: Callable, x, w, t, device: torch.device) -> tuple[int | None, str]:
    """:func:`peak_extra_bytes` for a provider of three operands."""
    x.grad = w.grad = None
    return peak_extra_bytes(lambda xx, _: fn(xx, w, t), x, t, device)


def run_linear(
    config: dict[str, Any] | None = None,
    *,
    providers: Iterable[str] | None = None,
    backend: str | None = None,
    device: str | torch.device | None = None,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The fused linear + loss cases of ``config`` (:data:`LINEAR_CONFIG` by default): one row
    per case and provider, with the :data:`FIELDS` of the CSV (``size`` is ``NxHxV``,
    ``grad_bytes`` the bytes of the full logits, ``N x V`` elements)."""
    from crossent.kernels import wait_for_compiles

    config = {**LINEAR_CONFIG, **(config or {})}
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, str(config.get("dtype", "float32")))
    warmup, repeats = int(config["warmup"]), int(config["repeats"])
    wanted = None if providers is None else set(providers)
    info = machine_info(device)
    stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    run_id = f"{stamp.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
    rows = []
    for case in config["cases"]:
        chosen = {
            p: fn
            for p, fn in _linear_providers(case["loss"], backend).items()
            if wanted is None or p in wanted
        }
        x, w, t = _linear_inputs(case, dtype, device)
        label = f"{case['n']}x{case['h']}x{case['v']}"
        if progress:
            progress(f"linear {case['loss']} {label}: {', '.join(chosen)}")
        times: dict[str, list[tuple[float, float]]] = {p: [] for p in chosen}
        for round_ in range(warmup + repeats):
            if round_ == warmup:
                wait_for_compiles()  # the timed rounds see the compiled graphs
            for p, fn in chosen.items():
                step = _linear_step(fn, x, w, t, device)
                if round_ >= warmup:
                    times[p].append(step)
        for p, fn in chosen.items():
            row = dict.fromkeys(FIELDS)
            row.update(info, run_id=run_id, date=stamp.isoformat())
            row.update(
                dtype=str(dtype).replace("torch.", ""),
                loss=f"linear_{case['loss']}",
                size=label,
                numel=int(case["n"]) * int(case["v"]),
                provider=p,
                backend=backend or "auto",
                repeats=repeats,
                grad_bytes=int(case["n"]) * int(case["v"]) * x.element_size(),
            )
            for key, values in (
                ("fwd", [a for a, _ in times[p]]),
                ("bwd", [b for _, b in times[p]]),
                ("total", [a + b for a, b in times[p]]),
            ):
                med, lo, hi = _quantiles(values)
                row[f"{key}_ms"], row[f"{key}_p25_ms"], row[f"{key}_p75_ms"] = med, lo, hi
            if memory:
                row["peak_extra_bytes"], row["peak_method"] = _linear_peak(fn, x, w, t, device)
            else:
                row["peak_method"] = "skipped"
            rows.append(row)
        del x, w, t
        gc.collect()
    return rows


def linear_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fused linear + loss targets on these rows: for cross entropy, peak extra memory at
    most torch's chunked path's and time at most 1.1x its; for the sigmoid focal loss, peak at
    most 0.2x the unfused crossent loss's and time at most 1.1x its."""
    checks = []
    pairs = (
        ("linear_cross_entropy", f"torch-chunked-{TORCH_CHUNK}", 1.0),
        ("linear_sigmoid_focal", "unfused-crossent", 0.2),
    )
    for loss, baseline, peak_ratio in pairs:
        for row in rows:
            if row["loss"] != loss or row["provider"] != "crossent-linear":
                continue
            base = next(
                (
                    r
                    for r in rows
                    if r["loss"] == loss and r["size"] == row["size"] and r["provider"] == baseline
                ),
                None,
            )
            if base is None:
                continue
            ratio = row["total_ms"] / base["total_ms"]
            checks.append(
                {
                    "target": f"{loss} {row['size']}: time vs {baseline}",
                    "wanted": "<= 1.10x",
                    "measured": f"{ratio:.2f}x",
                    "met": ratio <= 1.1,
                }
            )
            if row.get("peak_extra_bytes") is not None and base.get("peak_extra_bytes"):
                peak = row["peak_extra_bytes"] / base["peak_extra_bytes"]
                checks.append(
                    {
                        "target": f"{loss} {row['size']}: peak extra memory vs {baseline}",
                        "wanted": f"<= {peak_ratio:.2f}x",
                        "measured": f"{peak:.2f}x",
                        "met": peak <= peak_ratio,
                    }
                )
    return checks


def render_linear_markdown(rows: Sequence[dict[str, Any]], *, command: str = "") -> str:
    """The fused linear + loss section of RESULTS.md: one table per run (newest first)."""
    lines = [
        LINEAR_SECTION[0],
        "## Fused linear + loss",
        "",
        "One forward+backward of `loss(F.linear(x, W), t)` with `x` (N, H) and `W` (V, H) both "
        "requiring gradients, float32 (`crossent bench --family linear`, "
        "`benchmarks/bench_linear.py`). *Peak extra*: the rise of the peak resident set (CPU) "
        "or of `max_memory_allocated` (CUDA) over one step, the gradients of `x` and `W` "
        "included, in MiB and in units of the full logits (`N x V x 4` bytes).",
        "",
    ]
    if command:
        lines += [f"Reproduce: `{command}`", ""]
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row)
    for run_id in sorted(by_run, reverse=True):
        run_rows = by_run[run_id]
        first = run_rows[0]
        lines += [
            f"### Run {run_id}",
            "",
            f"{first.get('machine')}; {first.get('cpu')}, {first.get('cores')} cores, torch "
            f"threads {first.get('threads')}, load average {first.get('load')} at the start; "
            f"device {first.get('device')}; torch {first.get('torch')}; crossent "
            f"{first.get('crossent')} ({first.get('commit')}); {first.get('repeats')} timed "
            "rounds.",
            "",
            "| loss | N x H x V | provider | forward ms | backward ms | fwd+bwd ms | peak extra |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in run_rows:
            peak = row.get("peak_extra_bytes")
            peak_text = "-"
            if peak not in (None, ""):
                peak_text = f"{peak / 2**20:.0f} MiB ({peak / row['grad_bytes']:.2f} logits)"
            lines.append(
                f"| {row['loss']} | {row['size']} | {row['provider']} | {_fmt_ms(row, 'fwd')} "
                f"| {_fmt_ms(row, 'bwd')} | {_fmt_ms(row, 'total')} | {peak_text} |"
            )
        checks = linear_targets(run_rows)
        if checks:
            lines += ["", "| target | wanted | measured | met |", "|---|---|---|---|"]
            for c in checks:
                met = "yes" if c["met"] else "no"
                lines.append(f"| {c['target']} | {c['wanted']} | {c['measured']} | {met} |")
        lines.append("")
    lines.append(LINEAR_SECTION[1])
    return "\n".join(lines) + "\n"


def linear_section_of(text: str) -> str:
    """The fused linear + loss section of a RESULTS.md text, markers included ("" if none)."""
    start, end = LINEAR_SECTION
    if start not in text or end not in text.split(start, 1)[1]:
        return ""
    return start + text.split(start, 1)[1].split(end, 1)[0] + end + "\n"


def with_linear_section(text: str, section: str) -> str:
    """``text`` (RESULTS.md) with its fused linear + loss section replaced by ``section``,
    placed at the end ("" removes it). The scripts that re-render the rest of the file carry
    the old section over with :func:`linear_section_of`."""
    old = linear_section_of(text)
    if old:
        text = text.replace(old.rstrip("\n"), "").rstrip("\n") + "\n"
    if not section:
        return text
    return text.rstrip("\n") + "\n\n" + section


# --------------------------------------------------------------------------------------------
# The small suite: a training loop's batch (32-512 rows), where a loss costs its Python and its
# operator calls rather than its arithmetic
# --------------------------------------------------------------------------------------------

SMALL_SIZES: list[list[int]] = [[32, 10], [256, 80]]
SMALL_FIELDS = [
    "run_id",
    "date",
    "machine",
    "cpu",
    "threads",
    "load",
    "torch",
    "crossent",
    "commit",
    "case",
    "size",
    "provider",
    "rounds",
    "calls",
    "fwd_us",
    "fwd_p25_us",
    "fwd_p75_us",
    "total_us",
    "total_p25_us",
    "total_p75_us",
]


def _plain_asl(x, y, gamma_pos=0.0, gamma_neg=4.0, clip=0.05):
    """The asymmetric loss as its paper's code writes it (reduction="mean")."""
    p = torch.sigmoid(x)
    p_m = (p - clip).clamp(min=0)
    pos = y * torch.log(p.clamp(min=1e-8)) * (1 - p) ** gamma_pos
    neg = (1 - y) * torch.log((1 - p_m).clamp(min=1e-8)) * p_m**gamma_neg
    return -(pos + neg).mean()


def _plain_poly1(x, t, epsilon=1.0):
    """Poly-1 cross entropy as its paper writes it: ``CE + epsilon (1 - p_t)``."""
    ce = F.cross_entropy(x, t, reduction="none")
    p_t = F.softmax(x, dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
    return (ce + epsilon * (1 - p_t)).mean()


def _small_cases() -> dict[str, tuple[str, Callable, str, Callable]]:
    """case -> (target kind, crossent's call, baseline name, the baseline's call)."""
    import crossent

    def weighted_ce(fn):
        return lambda x, t, w: fn(x, t, weight=w, ignore_index=-100, label_smoothing=0.1)

    return {
        "cross_entropy": ("index", crossent.cross_entropy, "torch", F.cross_entropy),
        "cross_entropy+options": (
            "index_weighted",
            weighted_ce(crossent.cross_entropy),
            "torch",
            weighted_ce(F.cross_entropy),
        ),
        "cross_entropy (probabilities)": (
            "probs",
            crossent.cross_entropy,
            "torch",
            F.cross_entropy,
        ),
        "bce_with_logits": (
            "multilabel",
            crossent.binary_cross_entropy_with_logits,
            "torch",
            F.binary_cross_entropy_with_logits,
        ),
        "bce_with_logits+pos_weight": (
            "multilabel_weighted",
            lambda x, y, w: crossent.binary_cross_entropy_with_logits(x, y, pos_weight=w),
            "torch",
            lambda x, y, w: F.binary_cross_entropy_with_logits(x, y, pos_weight=w),
        ),
        "binary_cross_entropy": (
            "multilabel_probs",
            crossent.binary_cross_entropy,
            "torch",
            F.binary_cross_entropy,
        ),
        "sigmoid_focal": (
            "multilabel",
            crossent.sigmoid_focal_loss,
            "torchvision-style",
            torchvision_style_focal,
        ),
        "softmax_focal": ("index", crossent.softmax_focal_loss, "eager-focal", eager_softmax_focal),
        "asl": ("multilabel", crossent.asymmetric_loss, "plain formula", _plain_asl),
        "poly1": ("index", crossent.poly1_cross_entropy, "plain formula", _plain_poly1),
    }


def _small_inputs(kind: str, n: int, c: int, g: torch.Generator):
    x = torch.randn(n, c, generator=g).requires_grad_(True)
    if kind.startswith("index"):
        t = torch.randint(0, c, (n,), generator=g)
        if kind == "index_weighted":
            t[::7] = -100
            return x, (t, torch.rand(c, generator=g) + 0.5)
        return x, (t,)
    if kind == "probs":
        return x, (torch.softmax(torch.randn(n, c, generator=g), dim=1),)
    y = (torch.rand(n, c, generator=g) < 0.3).float()
    if kind == "multilabel_probs":
        return torch.rand(n, c, generator=g).clamp(0.01, 0.99).requires_grad_(True), (y,)
    if kind == "multilabel_weighted":
        return x, (y, torch.rand(c, generator=g) + 0.5)
    return x, (y,)


def run_small(
    *,
    cases: Iterable[str] | None = None,
    sizes: Sequence[Sequence[int]] = tuple(SMALL_SIZES),
    rounds: int = 40,
    calls: int = 25,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time crossent against torch on small CPU inputs, one thread: forward alone (under
    ``torch.no_grad``, as in evaluation) and forward+backward, in microseconds per call.

    Every provider runs ``calls`` calls per round, side by side, for ``rounds`` rounds after
    as many warm-up rounds; a time is the median (and interquartile range) over the rounds of
    a round's mean call. Rows have :data:`SMALL_FIELDS`."""
    table = _small_cases()
    names = list(table) if cases is None else list(cases)
    for name in names:
        if name not in table:
            raise ValueError(f"Unknown small case {name!r}; the cases: {', '.join(table)}.")
    from crossent.kernels import wait_for_compiles

    info = machine_info(torch.device("cpu"))
    stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    run_id = f"{stamp.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}-small"
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for name in names:
            kind, ours, baseline, theirs = table[name]
            for n, c in sizes:
                if progress is not None:
                    progress(f"{name} {n}x{c}")
                x, rest = _small_inputs(kind, n, c, torch.Generator().manual_seed(0))
                providers = {"crossent": ours, baseline: theirs}
                # the steady state: a first call may start a background build or compile
                # (crossent's native CPU operators), which the timed calls do not wait for
                ours(x, *rest)
                wait_for_compiles()
                fwd = {p: [] for p in providers}
                total = {p: [] for p in providers}
                for r in range(2 * rounds):
                    for p, fn in providers.items():
                        with torch.no_grad():
                            t0 = time.perf_counter()
                            for _ in range(calls):
                                fn(x, *rest)
                            t1 = time.perf_counter()
                        for _ in range(calls):
                            x.grad = None
                            fn(x, *rest).backward()
                        t2 = time.perf_counter()
                        if r >= rounds:  # the first half warms up
                            fwd[p].append((t1 - t0) / calls)
                            total[p].append((t2 - t1) / calls)
                for p in providers:
                    f_med, f_lo, f_hi = _quantiles(fwd[p])
                    t_med, t_lo, t_hi = _quantiles(total[p])
                    rows.append(
                        {
                            "run_id": run_id,
                            "date": stamp.isoformat(),
                            **{k: info[k] for k in ("machine", "cpu", "load", "torch")},
                            "crossent": info["crossent"],
                            "commit": info["commit"],
                            "threads": threads,
                            "case": name,
                            "size": f"{n}x{c}",
                            "provider": p,
                            "rounds": rounds,
                            "calls": calls,
                            "fwd_us": f_med * 1e3,
                            "fwd_p25_us": f_lo * 1e3,
                            "fwd_p75_us": f_hi * 1e3,
                            "total_us": t_med * 1e3,
                            "total_p25_us": t_lo * 1e3,
                            "total_p75_us": t_hi * 1e3,
                        }
                    )
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def small_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """crossent over the baseline of each (case, size): forward and forward+backward."""
    out = []
    for row in rows:
        if row["provider"] != "crossent":
            continue
        base = next(
            r
            for r in rows
            if r["case"] == row["case"] and r["size"] == row["size"] and r is not row
        )
        out.append(
            {
                "case": row["case"],
                "size": row["size"],
                "baseline": base["provider"],
                "fwd_us": row["fwd_us"],
                "base_fwd_us": base["fwd_us"],
                "fwd_ratio": row["fwd_us"] / base["fwd_us"],
                "total_us": row["total_us"],
                "base_total_us": base["total_us"],
                "total_ratio": row["total_us"] / base["total_us"],
            }
        )
    return out


def render_small_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The small suite's latest run as a Markdown section."""
    if not rows:
        return ""
    latest = max(r["run_id"] for r in rows)
    rows = [r for r in rows if r["run_id"] == latest]
    first = rows[0]
    lines = [
        f"## Small inputs: run {latest}",
        "",
        f"{first['machine']}; {first['cpu']}, torch threads {first['threads']}, load average "
        f"{first.get('load') or '?'} at the start; torch {first['torch']}; crossent "
        f"{first['crossent']} ({first.get('commit') or 'no git revision'}); float32 on CPU; "
        f"{first['rounds']} timed rounds of {first['calls']} calls per provider, side by side.",
        "Microseconds per call, median over the rounds. *Forward*: the loss alone, under "
        "`torch.no_grad()`; *fwd+bwd*: the loss and `backward()`. *Ratio*: crossent's time over "
        "the baseline's (torch's own function where torch has the loss, else the plain "
        "formula); at most 1.25 is the goal where torch has the loss, at most 1 elsewhere.",
        "Produced by `python benchmarks/bench_small.py` (or `crossent bench --family small`).",
        "",
        "| case | size | baseline | forward us (crossent / baseline) | ratio "
        "| fwd+bwd us (crossent / baseline) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in small_ratios(rows):
        lines.append(
            f"| {r['case']} | {r['size']} | {r['baseline']} | {r['fwd_us']:.0f} / "
            f"{r['base_fwd_us']:.0f} | {r['fwd_ratio']:.2f} | {r['total_us']:.0f} / "
            f"{r['base_total_us']:.0f} | {r['total_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def append_small_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SMALL_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_small_csv(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in SMALL_FIELDS:
            if key.endswith("_us"):
                row[key] = float(row[key])
    return rows
