"""Fused linear + loss: crossent's chunked head + loss against torch's chunked
``F.linear_cross_entropy`` and the unfused ``loss(F.linear(x, W), t)``. Cases: cross entropy at
N=4096, H=512, V=32000 and the multi-label sigmoid focal loss at N=2048, H=256, V=50000
(``crossent.bench.LINEAR_CONFIG``).

    python benchmarks/bench_linear.py
    python benchmarks/bench_linear.py --quick

Appends to ``results_linear.csv`` and rewrites the fused linear + loss section of
``RESULTS.md`` (``render.py`` keeps that section when it re-renders the rest).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from common import HERE, RESULTS_MD, bench

RESULTS_LINEAR_CSV = HERE / "results_linear.csv"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the fused linear + loss.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--providers", help="comma-separated subset of the providers")
    parser.add_argument("--backend", help="backend of crossent (default: auto)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--no-save", action="store_true", help="print only; keep the files")
    args = parser.parse_args(argv)
    config = dict(bench.LINEAR_QUICK_CONFIG if args.quick else bench.LINEAR_CONFIG)
    if args.repeats:
        config["repeats"] = args.repeats
    providers = None if not args.providers else [p.strip() for p in args.providers.split(",")]
    rows = bench.run_linear(
        config,
        providers=providers,
        backend=args.backend,
        device=args.device,
        progress=lambda msg: print(f"running {msg}", flush=True),
    )
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(bench.render_linear_markdown(rows, command=command))
    if not args.no_save:
        bench.append_csv(rows, RESULTS_LINEAR_CSV)
        all_rows = bench.read_csv(RESULTS_LINEAR_CSV)
        section = bench.render_linear_markdown(all_rows, command=command)
        text = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
        RESULTS_MD.write_text(bench.with_linear_section(text, section))
        print(f"appended to {RESULTS_LINEAR_CSV.name}, rendered {RESULTS_MD.name}")


if __name__ == "__main__":
    main()
