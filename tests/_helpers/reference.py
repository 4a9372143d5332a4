"""Independent float64 references, written the way the papers and official code write them.

They use probability-space formulas on purpose (torchvision's focal loss, ASL's official code),
so they are a check on crossent's log-space math, not a copy of it. Use moderate logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def torchvision_focal(x, y, *, gamma=2.0, alpha=0.25, pos_weight=None):
    """torchvision.ops.sigmoid_focal_loss (reduction='none'), with torch's pos_weight in the CE."""
    x, y = x.double(), y.double()
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none", pos_weight=pos_weight)
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha is not None:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


def official_asl(x, y, *, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8):
    """Ridnik et al.'s AsymmetricLoss (github.com/Alibaba-MIIL/ASL), elementwise, float64."""
    x, y = x.double(), y.double()
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * y + xs_neg * (1 - y)
        one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
        loss = loss * torch.pow(1 - pt, one_sided_gamma)
    return -loss
