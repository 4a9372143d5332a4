"""Cross entropy (crossent fused and reference, torch eager and compiled) and the softmax focal
loss (crossent fused and reference, the common eager formula and its compile). Sizes from
config.json (8192 x 1000 and 4096 x 32000 by default).

    python benchmarks/bench_cross_entropy.py
    python benchmarks/bench_cross_entropy.py --quick
"""

from common import main

if __name__ == "__main__":
    main("cross_entropy")
