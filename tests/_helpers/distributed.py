"""Run a function on several CPU processes joined by a gloo process group, from a test.

:func:`run_distributed` spawns ``world_size`` fresh interpreters (the ``spawn`` start method:
no state forked from pytest), each calling ``fn(rank, world_size)`` inside an initialised
process group on a free TCP port. Each returns a picklable result, saved to a file; the parent
collects them. Every wait has a deadline -- the collectives (gloo ``timeout``) and the join --
so a deadlock fails the test instead of hanging CI.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[[int, int], Any],
    out_dir: str,
    collective_timeout_s: float,
) -> None:
    torch.set_num_threads(1)  # two processes on a small CI machine: no oversubscription
    path = Path(out_dir) / f"rank{rank}.pt"
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=collective_timeout_s),
        )
        try:
            result = {"ok": True, "result": fn(rank, world_size)}
        finally:
            dist.destroy_process_group()
    except BaseException:  # report everything, including a collective's timeout
        result = {"ok": False, "error": traceback.format_exc()}
    partial = path.with_suffix(".partial")
    torch.save(result, partial)
    os.replace(partial, path)  # the parent never reads a half-written file


def run_distributed(
    fn: Callable[[int, int], Any],
    out_dir: Path,
    *,
    world_size: int = 2,
    timeout_s: float = 240.0,
    collective_timeout_s: float = 120.0,
) -> list[Any]:
    """``[fn(0, world_size), fn(1, world_size), ...]``, each run in its own process.

    ``fn`` must be importable by name (a module-level function). Raises AssertionError with
    the rank's traceback when a rank fails, or when the processes outlive ``timeout_s``. A
    free port can be taken by another process before the ranks bind it: that case (only)
    is retried, twice.
    """
    for attempt in range(3):
        try:
            return _run_once(
                fn, Path(out_dir) / f"attempt{attempt}", world_size, timeout_s, collective_timeout_s
            )
        except _PortTaken:
            continue
    raise AssertionError("could not bind a free TCP port for the process group in 3 attempts")


class _PortTaken(Exception):
    pass


def _run_once(fn, out_dir: Path, world_size: int, timeout_s: float, collective_timeout_s: float):
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(
            target=_entry,
            args=(rank, world_size, port, fn, str(out_dir), collective_timeout_s),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        for p in procs:
            p.start()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    deadline = time.monotonic() + timeout_s
    paths = [out_dir / f"rank{rank}.pt" for rank in range(world_size)]
    failed = None
    try:
        # Poll: a rank that fails stops the run at once (the others would wait in a
        # collective until its timeout).
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            for rank, path in enumerate(paths):
                if path.exists() and not torch.load(path, weights_only=False)["ok"]:
                    failed = rank
            if failed is not None:
                break
            time.sleep(0.1)
    finally:
        hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=10)
    results, errors = [], []
    for rank, (p, path) in enumerate(zip(procs, paths)):
        if not path.exists():
            if failed is not None:
                errors.append(f"rank {rank} was stopped after rank {failed} failed")
            elif rank in hung:
                errors.append(f"rank {rank} did not finish within {timeout_s} s")
            else:
                errors.append(f"rank {rank} exited with code {p.exitcode} and no result")
            continue
        result = torch.load(path, weights_only=False)
        if result["ok"]:
            results.append(result["result"])
        elif "address already in use" in result["error"].lower():
            raise _PortTaken(result["error"])
        else:
            errors.append(f"rank {rank} failed:\n{result['error']}")
    if errors:  # every rank's story: the first to fail is not always the lowest rank
        raise AssertionError("\n".join(errors))
    return results


@contextmanager
def collectives():
    """Record the ``torch.distributed`` collectives launched inside the block.

    Yields a list, filled on exit with one name per collective (``"c10d::allreduce_"``,
    ``"c10d::broadcast_"``, ...). It reads the profiler's record of the c10d ops, so it sees
    eager calls and the functional collectives of a compiled graph alike.
    """
    names: list[str] = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        yield names
    names.extend(e.name for e in prof.events() if e.name.startswith("c10d::"))
