"""What a user waits for on CPU: each loss in a fresh process, forward+backward at 4096 x 1000
with default options -- the first call, the slowest call while its graph compiles in the
background, the steady (compiled) time, and the slowest call after a change (a new gamma or
alpha, a class weight, a new batch size, float64, another reduction), made one after the
other without waiting, as a training script that changes its settings would.

    python benchmarks/bench_first_call.py
    python benchmarks/bench_first_call.py --losses cross_entropy,sigmoid_focal_loss

Prints a markdown table (seconds; steady in milliseconds) and the load average at the start.
Nothing is saved: the table in docs/performance.md is copied from a run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

LOSSES = (
    "cross_entropy",
    "softmax_focal_loss",
    "poly1_cross_entropy",
    "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss",
    "asymmetric_loss",
    "poly1_focal_loss",
)

# Runs in the child process: argv[1] is the loss's function name.
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
import crossent
from crossent.kernels import wait_for_compiles
import_s = time.perf_counter() - t0
name = sys.argv[1]
fn = getattr(crossent, name)
softmax = name in ("cross_entropy", "softmax_focal_loss", "poly1_cross_entropy")
N, C = 4096, 1000

def data(n, dtype):
    x = torch.randn(n, C, dtype=dtype, requires_grad=True)
    if softmax:
        t = torch.randint(0, C, (n,))
    else:
        t = (torch.rand(n, C) < 0.05).to(dtype)
    return x, t

def step(x, t, **kw):
    t0 = time.perf_counter()
    out = fn(x, t, **kw)
    (out.sum() if out.dim() else out).backward()
    return time.perf_counter() - t0

x, t = data(N, torch.float32)
first = step(x, t)
during = 0.0
deadline = time.perf_counter() + 60.0
while not wait_for_compiles(timeout=0) and time.perf_counter() < deadline:
    during = max(during, step(x, t))
wait_for_compiles()
steady = sorted(step(x, t) for _ in range(9))[4]

gamma = {"softmax_focal_loss": "gamma", "sigmoid_focal_loss": "gamma",
         "poly1_focal_loss": "gamma", "asymmetric_loss": "gamma_neg",
         "poly1_cross_entropy": "epsilon"}.get(name)
changes = []
if gamma:
    changes.append((f"{gamma}=3", {gamma: 3.0}, N, torch.float32))
if name in ("sigmoid_focal_loss", "softmax_focal_loss", "poly1_focal_loss"):
    changes.append(("alpha=0.5", {"alpha": 0.5}, N, torch.float32))
if softmax:
    changes.append(("weight", {"weight": torch.rand(C) + 0.5}, N, torch.float32))
elif name != "asymmetric_loss":
    changes.append(("pos_weight", {"pos_weight": torch.rand(C) + 0.5}, N, torch.float32))
changes += [
    ("batch 2048", {}, 2048, torch.float32),
    ("float64", {}, N, torch.float64),
    ('reduction="sum"', {"reduction": "sum"}, N, torch.float32),
]
later = (0.0, "")
for label, kw, n, dtype in changes:
    xx, tt = data(n, dtype)
    for _ in range(3):
        s = step(xx, tt, **kw)
        if s > later[0]:
            later = (s, label)
wait_for_compiles()
print(json.dumps({"import": import_s, "first": first, "during": during, "steady": steady,
                  "later": later[0], "later_what": later[1]}))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="First-call and stall times per loss.")
    parser.add_argument("--losses", help="comma-separated subset of: " + ", ".join(LOSSES))
    args = parser.parse_args(argv)
    losses = LOSSES if not args.losses else [s.strip() for s in args.losses.split(",")]
    load = os.getloadavg()[0]
    print(f"load average at the start: {load:.2f}, {os.cpu_count()} CPUs\n")
    print("| loss | import | first call | slowest while compiling | steady | slowest later call |")
    print("|---|--:|--:|--:|--:|--:|")
    for name in losses:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", ""))
        if not env["OMP_NUM_THREADS"]:
            del env["OMP_NUM_THREADS"]
        done = subprocess.run(
            [sys.executable, "-c", CHILD, name], capture_output=True, text=True, env=env
        )
        if done.returncode != 0:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1]} |||||")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {name} | {r['import']:.1f} s | {r['first']:.2f} s | {r['during']:.2f} s | "
            f"{r['steady'] * 1e3:.0f} ms | {r['later']:.2f} s ({r['later_what']}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
