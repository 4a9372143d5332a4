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


# --------------------------------------------------------------------------------------------
# The softmax family: probability-space float64 formulas, per sample (reduction "none")
# --------------------------------------------------------------------------------------------


def _class_last(x, class_dim):
    return x.movedim(class_dim, -1)


def smoothed_target_distribution(x, target, *, label_smoothing=0.0, ignore_index=-100):
    """The (smoothed) target distribution y' with the class dimension last, float64, and the
    valid mask; ignored samples get an all-zero y'."""
    class_dim = 0 if x.dim() == 1 else 1
    num_classes = x.shape[class_dim]
    if target.is_floating_point():
        y = _class_last(target.double(), class_dim)
        valid = torch.ones(y.shape[:-1], dtype=torch.bool)
        if ignore_index is not None:
            valid = ~(y == ignore_index).all(-1)
    else:
        valid = torch.ones(target.shape, dtype=torch.bool)
        if ignore_index is not None:
            valid = target != ignore_index
        y = F.one_hot(torch.where(valid, target, 0), num_classes).double()
    y = y * (1 - label_smoothing) + label_smoothing / num_classes
    return y * valid.unsqueeze(-1), valid


def softmax_focal_reference(
    x, target, *, gamma=2.0, alpha=None, weight=None, label_smoothing=0.0, ignore_index=-100
):
    """Multi-class focal loss in probability space (Lin et al. 2017 eq. 5, generalised to a
    target distribution): sum_c y'_c w_c alpha_c (1 - p_c)^gamma * -log p_c."""
    class_dim = 0 if x.dim() == 1 else 1
    p = torch.softmax(_class_last(x.double(), class_dim), -1)
    y, _ = smoothed_target_distribution(
        x, target, label_smoothing=label_smoothing, ignore_index=ignore_index
    )
    coef = y
    if weight is not None:
        coef = coef * weight.double()
    if alpha is not None:
        coef = coef * (alpha.double() if isinstance(alpha, torch.Tensor) else alpha)
    return (coef * (1 - p) ** gamma * -torch.log(p)).sum(-1)


def poly1_reference(x, target, *, epsilon=1.0, weight=None, label_smoothing=0.0, ignore_index=-100):
    """Poly-1 (Leng et al. 2022, the paper's code): torch's cross entropy + epsilon (1 - P_t),
    P_t = sum_c y'_c p_c. With class weights the polynomial term is weighted like the CE terms,
    sum_c w_c y'_c (1 - p_c) (crossent's definition)."""
    class_dim = 0 if x.dim() == 1 else 1
    x = x.double()
    kwargs = {} if target.is_floating_point() else {"ignore_index": ignore_index}
    ce = F.cross_entropy(
        x,
        target.double() if target.is_floating_point() else target,
        weight=None if weight is None else weight.double(),
        label_smoothing=label_smoothing,
        reduction="none",
        **kwargs,
    )
    p = torch.softmax(_class_last(x, class_dim), -1)
    y, valid = smoothed_target_distribution(
        x, target, label_smoothing=label_smoothing, ignore_index=ignore_index
    )
    if weight is None:
        poly = (1 - (y * p).sum(-1)) * valid
    else:
        poly = (y * weight.double() * (1 - p)).sum(-1)
    return ce + epsilon * poly


def poly1_focal_reference(x, y, *, epsilon=1.0, gamma=2.0, alpha=0.25, pos_weight=None):
    """The sigmoid Poly-1 focal loss of the paper's code: FL + epsilon (1 - p_t)^(gamma + 1)."""
    x, y = x.double(), y.double()
    p = torch.sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    fl = torchvision_focal(x, y, gamma=gamma, alpha=alpha, pos_weight=pos_weight)
    return fl + epsilon * (1 - p_t) ** (gamma + 1)
