"""BCE with logits and the sigmoid focal loss: crossent fused and reference, torch, the
torchvision-style focal formula eager and compiled. Sizes from config.json.

    python benchmarks/bench_elementwise.py            # 1M, 4M, 16M elements, float32
    python benchmarks/bench_elementwise.py --quick    # a smoke test
"""

from common import main

if __name__ == "__main__":
    main("elementwise")
