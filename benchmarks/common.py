"""What the benchmark scripts share: arguments, the config, the results files.

The measuring itself is :mod:`crossent.bench` (also behind ``crossent bench``); these scripts
run one family each with the sizes of ``config.json`` and keep ``results.csv`` and
``RESULTS.md`` up to date.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing

from crossent import bench  # noqa: E402

CONFIG = HERE / "config.json"
RESULTS_CSV = HERE / "results.csv"
RESULTS_MD = HERE / "RESULTS.md"
RESULTS_SMALL_CSV = HERE / "results_small.csv"


def render_results(command: str = "") -> None:
    """RESULTS.md from every run in results.csv, then the small suite's latest run."""
    text = bench.render_markdown(bench.read_csv(RESULTS_CSV), command=command)
    if RESULTS_SMALL_CSV.exists():
        text += "\n" + bench.render_small_markdown(bench.read_small_csv(RESULTS_SMALL_CSV))
    RESULTS_MD.write_text(text)


def main(family: str, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"Benchmark the {family} losses.")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--losses", help="comma-separated subset of the family's losses")
    parser.add_argument("--providers", help="comma-separated subset of the providers")
    parser.add_argument("--backend", help="backend of the crossent provider (default: auto)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--no-save", action="store_true", help="print only; keep the CSV as is")
    args = parser.parse_args(argv)
    config = bench.load_config(args.config, quick=args.quick)
    if args.repeats:
        config["repeats"] = args.repeats
    split = lambda text: None if not text else [t.strip() for t in text.split(",")]  # noqa: E731
    rows = bench.run(
        config,
        families=(family,),
        losses=split(args.losses),
        providers=split(args.providers),
        backend=args.backend,
        device=args.device,
        progress=lambda msg: print(f"running {msg}", flush=True),
    )
    print(bench.render_markdown(rows, runs=1))
    if not args.no_save:
        bench.append_csv(rows, RESULTS_CSV)
        command = "python " + " ".join(
            shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]
        )
        render_results(command)
        print(f"appended to {RESULTS_CSV.name}, rendered {RESULTS_MD.name}")
