"""Re-render RESULTS.md from results.csv (the latest runs, newest first)."""

from common import RESULTS_CSV, RESULTS_MD, bench

if __name__ == "__main__":
    RESULTS_MD.write_text(bench.render_markdown(bench.read_csv(RESULTS_CSV)))
    print(f"rendered {RESULTS_MD}")
