"""Re-render RESULTS.md from results.csv (the latest runs, newest first) and results_small.csv;
the fused linear + loss section (bench_linear.py) is kept as it is."""

from common import RESULTS_MD, render_results

if __name__ == "__main__":
    render_results()
    print(f"rendered {RESULTS_MD}")
