"""Re-render RESULTS.md from results.csv (the latest runs, newest first); the fused linear +
loss section (bench_linear.py) is kept as it is."""

from common import RESULTS_CSV, RESULTS_MD, bench

if __name__ == "__main__":
    old = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    new = bench.render_markdown(bench.read_csv(RESULTS_CSV))
    RESULTS_MD.write_text(bench.with_linear_section(new, bench.linear_section_of(old)))
    print(f"rendered {RESULTS_MD}")
