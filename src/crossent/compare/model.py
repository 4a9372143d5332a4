"""The small model every loss trains: a multi-layer perceptron, built from a seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["build_mlp", "describe_mlp"]


def build_mlp(
    in_features: int,
    out_features: int,
    *,
    hidden: Sequence[int] = (64,),
    dropout: float = 0.0,
    seed: int = 0,
) -> nn.Sequential:
    """``Linear -> ReLU (-> Dropout)`` per hidden width, then a ``Linear`` to the logits.

    The weights are PyTorch's default initialisation drawn from ``seed`` (the global random
    state is left as it was), so one seed gives one initialisation for every loss.

    >>> model = build_mlp(4, 2, hidden=(8,), seed=0)
    >>> torch.equal(model[0].weight, build_mlp(4, 2, hidden=(8,), seed=0)[0].weight)
    True
    """
    layers: list[nn.Module] = []
    width = in_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features))
        return nn.Sequential(*layers)


def describe_mlp(in_features: int, out_features: int, hidden: Sequence[int], dropout: float) -> str:
    """``"MLP 64-64-1 (ReLU)"``, for reports.

    >>> describe_mlp(64, 1, (64,), 0.0)
    'MLP 64-64-1 (ReLU)'
    """
    widths = "-".join(str(w) for w in (in_features, *hidden, out_features))
    extra = f", dropout {dropout:g}" if dropout else ""
    return f"MLP {widths} (ReLU{extra})"
