"""The seed walkthrough: BCE computed by hand, element by element, and checked against torch.

The BCE tutorials crossent grew from compute ``torch.manual_seed(42); torch.rand(2, 3)`` against
targets ``[[0, 1, 1], [1, 0, 0]]`` by hand. They print 0.7725 because they rounded the inputs to
four digits first; on the exact inputs the loss is 0.7739, which is what torch (and crossent)
give.
"""

from __future__ import annotations

import math

import torch

from crossent.functional import binary_cross_entropy

SEED_CASES = (
    (42, [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
    (0, [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
)


def walkthrough(seed: int, target: list[list[float]]) -> dict:
    """Compute BCE by hand for ``torch.manual_seed(seed); torch.rand(2, 3)``.

    >>> result = walkthrough(42, [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    >>> round(result["mean"], 4), round(result["torch"], 4)
    (0.7739, 0.7739)
    """
    torch.manual_seed(seed)
    p = torch.rand(len(target), len(target[0]), dtype=torch.float32)
    y = torch.tensor(target)
    rows = []
    for i in range(p.shape[0]):
        row = []
        for j in range(p.shape[1]):
            pi, yi = float(p[i, j]), float(y[i, j])
            value = -(yi * math.log(pi) + (1 - yi) * math.log(1 - pi))
            row.append((pi, yi, value))
        rows.append(row)
    elementwise = [[v for _, _, v in row] for row in rows]
    mean = sum(map(sum, elementwise)) / p.numel()
    return {
        "seed": seed,
        "rows": rows,
        "elementwise": elementwise,
        "mean": mean,
        "crossent": float(binary_cross_entropy(p, y)),
        "torch": float(torch.nn.functional.binary_cross_entropy(p, y)),
    }


def render(result: dict) -> str:
    lines = [f"torch.manual_seed({result['seed']}); p = torch.rand(2, 3)"]
    for i, row in enumerate(result["rows"]):
        for j, (p, y, v) in enumerate(row):
            term = f"-log({p:.4f})" if y == 1 else f"-log(1 - {p:.4f})"
            lines.append(f"  [{i},{j}] p={p:.4f} y={y:.0f}  {term} = {v:.4f}")
    lines.append(
        f"  mean by hand {result['mean']:.4f} | crossent {result['crossent']:.4f} "
        f"| torch {result['torch']:.4f} | difference {abs(result['mean'] - result['torch']):.1e}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    for seed, target in SEED_CASES:
        print(render(walkthrough(seed, target)))
