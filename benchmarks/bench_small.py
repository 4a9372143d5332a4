"""The small suite: crossent against torch at a training loop's batch sizes (32 x 10 and
256 x 80), CPU, one thread -- forward alone and forward+backward, in microseconds per call.
Appends to results_small.csv and adds its latest run to RESULTS.md.

    python benchmarks/bench_small.py
    python benchmarks/bench_small.py --cases cross_entropy,bce_with_logits --rounds 10
"""

from __future__ import annotations

import argparse

from common import RESULTS_SMALL_CSV, bench, render_results

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Benchmark the losses on small inputs.")
    parser.add_argument("--cases", help="comma-separated subset of the cases")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=25, help="calls per provider per round")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    cases = None if not args.cases else [c.strip() for c in args.cases.split(",")]
    rows = bench.run_small(
        cases=cases,
        rounds=args.rounds,
        calls=args.calls,
        progress=lambda msg: print(f"running {msg}", flush=True),
    )
    print(bench.render_small_markdown(rows))
    if not args.no_save:
        bench.append_small_csv(rows, RESULTS_SMALL_CSV)
        render_results()
        print(f"appended to {RESULTS_SMALL_CSV.name}, rendered RESULTS.md")
