"""Shared docstring fragments, so that one option is described in one place.

A function's docstring names fragments as ``{name}``; :func:`fill_doc` substitutes them when
the module is imported (the rendered text is what ``help()``, doctests and the API reference see).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

FRAGMENTS = {
    "weight": """weight: optional rescaling weight, broadcast to the input's shape exactly as in
            torch (a size that cannot broadcast raises ValueError). It multiplies the
            elementwise loss; it does **not** change the denominator of ``"mean"``. Any real
            values, negative ones included, as in torch.""",
    "pos_weight": """pos_weight: optional weight of the positive term, broadcast against the
            input's trailing dimensions (size ``(C,)`` for an ``(N, C)`` input, ``(C, 1, 1)``
            for ``(N, C, H, W)``). ``negatives / positives`` per label balances a label's
            classes; :func:`crossent.pos_weight` computes it from targets.""",
    "label_smoothing": """label_smoothing: ``s`` in [0, 1). Targets become ``y (1 - s) + s / 2``
            (the convention of Keras' ``BinaryCrossentropy(label_smoothing=s)``). Default: 0.""",
    "ignore_index": """ignore_index: elements whose target equals this value contribute
            nothing and are not counted by ``"mean"``. ``None`` (default) disables it. When
            every element is ignored, ``"mean"`` is 0 with zero gradient, never NaN.""",
    "reduction": """reduction: ``"none"`` (the elementwise loss, the input's shape), ``"sum"``,
            ``"mean"`` (sum over valid elements / number of valid elements) or
            ``"global_mean"`` (the mean over every rank of a ``torch.distributed`` process
            group; equal to ``"mean"`` outside one). Default: ``"mean"``.""",
    "process_group": """process_group: the group ``"global_mean"`` reduces over; ``None``
            (default) is the default process group.""",
    "vocab_group": """vocab_group: a ``torch.distributed`` process group whose ranks each hold a
            contiguous slice of the classes, in rank order (vocab parallelism): ``input`` is
            this rank's slice of the class dimension, class-index targets stay global, and
            probability targets and per-class tensors are this rank's slice. Every rank
            returns the loss of all the classes; the input's gradient is its slice of the
            whole one. ``None`` (default): the input holds every class. See "Vocab-parallel
            losses" in the distributed training guide.""",
    "backend": """backend: how the loss is computed: ``"reference"`` (torch operations and
            autograd), ``"fused"`` (the loss and its closed-form gradient in one pass),
            ``"compiled"`` (that pass through ``torch.compile``), ``"triton"`` (GPU kernels) or
            ``"auto"``. ``None`` (default) reads the environment variable ``CROSSENT_BACKEND``,
            else ``"auto"``: the fastest that applies. :mod:`crossent.kernels` documents the
            rule; every backend gives the same result to rounding.""",
    "gamma": """gamma: focusing parameter ``>= 0``. 0 gives (alpha-weighted) BCE exactly; 2 is
            the paper's choice. Any value in (0, 1) is safe too: the modulating factor is
            computed from ``log(1 - p_t)``, so loss and gradient stay finite at saturated
            logits. Default: 2.""",
    "alpha": """alpha: weight of the positive class in [0, 1]; negatives get ``1 - alpha``
            (Lin et al.'s and torchvision's convention: 0.25 *down*-weights the positives,
            which the focal term already favours). ``None`` disables it. Default: 0.25.""",
    "binary_shape": """Shape:
        - input: any shape ``(*)``.
        - target: the same shape as ``input`` (no broadcasting: ``(N,)`` against ``(N, 1)``
          raises). Float (soft targets in [0, 1] allowed), integer or bool.
        - output: a scalar, or ``(*)`` for ``reduction="none"``.""",
    # ---- the softmax (multi-class) family ----
    "softmax_weight": """weight: optional per-class weight of size ``(C,)``; any real values,
            negative ones included, as in torch.
            It multiplies every loss term of class ``c`` by ``weight[c]``; for class-index
            targets ``"mean"`` divides by the summed weights of the valid targets' classes
            (torch's convention, see ``reduction``).""",
    "softmax_ignore_index": """ignore_index: a class-index target equal to this value contributes
            nothing and is not counted by ``"mean"`` (default -100, torch's). With probability
            targets, a position whose target vector is filled with this value is ignored
            (torch refuses ``ignore_index`` there). ``None`` disables it. When every target is
            ignored, ``"mean"`` is 0 with zero gradient where torch returns NaN.""",
    "softmax_label_smoothing": """label_smoothing: ``s`` in [0, 1). The target distribution
            becomes ``(1 - s) y + s / C``, uniform over the ``C`` classes (torch's convention
            for cross entropy; the sigmoid family uses ``s / 2`` per element). Default: 0.""",
    "softmax_sample_weight": """sample_weight: optional per-sample weight (Keras' name), a
            floating-point tensor of the per-sample loss's size: the input's without the class
            dimension, for probability targets too (``(N)``, ``(N, d1, ..., dk)``, ``()`` for
            a ``(C)`` input). Each sample's loss, its z-loss included, is multiplied by it; it
            does **not** change the denominator of ``"mean"`` (as ``weight`` of the binary
            losses). Any finite values, negative ones included; an ignored sample stays 0.
            Per token in a language model: ``sample_weight=mask.float()`` with ``"sum"``, or
            ``"mean"`` to keep torch's denominator. On the fused backends it must not require
            a gradient (``"auto"`` takes the reference path then).""",
    "softmax_z_loss": """z_loss: the coefficient ``λ >= 0`` of PaLM's auxiliary z-loss
            ``λ lse(x)^2``, ``lse(x) = log Σ_c exp(x_c)`` (of the soft-capped logits with
            ``softcap``), added to each valid sample's loss: it keeps the softmax's normaliser
            near 1 (PaLM used ``1e-4``). The term is weighted as the sample counts in the
            mean's denominator -- by ``weight[t]`` for a class index with ``weight``, else
            by 1 -- so ``"mean"`` is the loss's mean plus ``λ`` times the (equally weighted)
            mean of ``lse^2`` over the valid samples: without ``weight``, plainly the mean
            over valid samples. (Liger-Kernel leaves the term unweighted and divides it by
            the valid count, with a TODO to weight it; the two agree without ``weight``.)
            ``alpha``, ``gamma``, ``epsilon`` and ``label_smoothing`` do not change it;
            ``sample_weight`` scales it with the rest of the sample's loss. 0 (default): off.""",
    "softmax_softcap": """softcap: ``c > 0``: Gemma 2's logit soft-capping, ``x <- c tanh(x / c)``
            before everything else (the loss, label smoothing, the z-loss), differentiated
            exactly (``1 - tanh^2`` computed as ``4 e / (1 + e)^2``, ``e = exp(-2|x| / c)``,
            never from a rounded ``tanh``). Gemma 2 used 30 for the final logits. A ``-inf``
            logit becomes ``-c``. ``None`` (default): off.""",
    "softmax_reduction": """reduction: ``"none"`` (one loss per sample, the input's size without
            the class dimension), ``"sum"``, ``"mean"`` or ``"global_mean"`` (the mean over
            every rank of a ``torch.distributed`` process group; equal to ``"mean"`` outside
            one). ``"mean"`` follows torch's two conventions: for class-index targets the sum
            divided by the summed ``weight`` of the valid targets' classes (their number
            without ``weight``); for probability targets the sum divided by the number of
            valid positions. Default: ``"mean"``.""",
    "softmax_shape": """Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; the class dimension is 1
          (0 for ``(C)``).
        - target: class indices of an integer dtype with the input's size without the class
          dimension (``()``, ``(N)`` or ``(N, d1, ..., dk)``), each in ``[0, C)`` or equal to
          ``ignore_index``; or class probabilities of a floating-point dtype with the input's
          size (one-hot targets, mixup / distillation targets).
        - output: a scalar, or the input's size without the class dimension for
          ``reduction="none"``.""",
    "dtype_note": """float16 and bfloat16 inputs are computed in float32 inside and returned in
    the input dtype; under ``torch.autocast`` the loss is returned in float32, as torch's own
    losses are.""",
}


def fill_doc(func: F) -> F:
    """Substitute the ``{name}`` placeholders of :data:`FRAGMENTS` in ``func.__doc__``."""
    doc = func.__doc__
    if doc:
        # Only known names are replaced, so LaTeX braces in ``.. math::`` are left alone.
        for name, text in FRAGMENTS.items():
            doc = doc.replace("{" + name + "}", text)
        func.__doc__ = doc
    return func
