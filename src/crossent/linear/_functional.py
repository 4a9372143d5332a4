r"""The fused linear + loss functions: a classifier head and its loss in one chunked pass.

``linear_cross_entropy(x, W, t)`` equals ``cross_entropy(F.linear(x, W), t)`` and
``linear_loss(x, W, t, loss=name, **options)`` equals the named crossent loss of
``F.linear(x, W, b)``, in value and in the gradients of ``x``, ``W`` and ``b`` -- without
the ``(N, V)`` logits or their gradient ever existing whole (:mod:`crossent.linear._chunked`
states the memory bound). With ``vocab_group=`` the head is split over ranks by classes: each
rank runs the chunked pass on its rows of the head with the vocab-parallel closed form of
:mod:`crossent.linear._vocab` as the block kernel.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from crossent import _validation as V
from crossent._precision import compute_dtype, output_dtype
from crossent._reduction import plan_reduction
from crossent.kernels._dispatch import (
    _EAGER_CHUNK_WHILE_COMPILING,
    _chunked,
    _run_compiled,
    requested_backend,
    select_backend,
)
from crossent.linear._chunked import Plan, block_columns, block_rows, gradient_in_place, run_plan
from crossent.linear._vocab import _known_denominator as vocab_known_denominator
from crossent.linear._vocab import check_vocab_call, vocab_closed_form, vocab_layout
from crossent.losses import CE, LossDefinition, run

__all__ = ["linear_cross_entropy", "linear_loss"]


def _definition(loss: object) -> LossDefinition:
    if isinstance(loss, LossDefinition):
        return loss
    if not isinstance(loss, str):
        raise TypeError(
            f'Expected `loss` to be a loss name such as "ce" or "focal", but got '
            f"{type(loss).__name__}."
        )
    from crossent.registry import get_loss

    return get_loss(loss)


def _mm_dtype(input: torch.Tensor) -> tuple[torch.dtype, bool]:
    """The matmuls' dtype, and whether autocast chose it: the autocast dtype under autocast
    (what F.linear would run in), else the compute dtype (float32 for half precision)."""
    device = input.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device), True
    return compute_dtype(input.dtype), False


def _rows_first(
    definition: LossDefinition, input: torch.Tensor, target: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The target with the input's leading dimensions flattened into rows, and those
    dimensions; a size that fits neither form is an error naming both."""
    lead = tuple(input.shape[:-1])
    V.check_tensor("target", target)
    n = 1
    for d in lead:
        n *= d
    dense = (*lead, n_classes)
    if definition.family == "softmax":
        if target.is_floating_point() and tuple(target.shape) == dense:
            return target.reshape(n, n_classes), lead
        if not target.is_floating_point() and tuple(target.shape) == lead:
            return target.reshape(n), lead
        raise ValueError(
            f"Expected `target` of size {torch.Size(lead)} (class indices, an integer dtype) "
            f"or {torch.Size(dense)} (class probabilities, floating point) for an input of "
            f"size {input.shape} and {n_classes} classes, but got size {target.shape} and "
            f"dtype {target.dtype}."
        )
    if tuple(target.shape) != dense:
        raise ValueError(
            f"Expected `target` of size {torch.Size(dense)} (one target per class: multi-hot "
            f"or soft labels) for an input of size {input.shape} and {n_classes} classes, but "
            f"got size {target.shape}."
        )
    return target.reshape(n, n_classes), lead


def _rows_first_options(options: Any, lead: tuple[int, ...], n: int) -> Any:
    """Tensor options that vary along the rows (``options._row_tensors``: a per-element or
    per-row weight) with the input's leading dimensions flattened into ``n`` rows, as the
    logits are. Class vectors and broadcast weights are left as they are."""
    if len(lead) == 1:
        return options
    import dataclasses

    changes = {}
    k = len(lead)
    for name in options._row_tensors:
        t = getattr(options, name)
        if not isinstance(t, torch.Tensor) or t.dim() < k:
            continue
        if tuple(t.shape[:k]) == lead:  # one value per row (and class)
            changes[name] = t.reshape(n, *t.shape[k:])
        elif t.dim() == k + 1:  # the logits' rank, broadcast along some leading dimension
            changes[name] = t.expand(*lead, t.shape[-1]).reshape(n, t.shape[-1])
    return dataclasses.replace(options, **changes) if changes else options


def compute(
    definition: LossDefinition,
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    vocab_group: Any = None,
    backend: str | None = None,
    batch_chunk_size: int | None = None,
    **keywords: Any,
) -> torch.Tensor:
    """The loss ``definition`` of ``F.linear(input, linear_weight, linear_bias)``: what every
    public linear function returns. With ``vocab_group``, ``linear_weight`` (and
    ``linear_bias``) are this rank's slice of the classes: see :func:`_vocab_kernel`."""
    mm_dtype, autocast = _mm_dtype(input) if isinstance(input, torch.Tensor) else (None, False)
    V.check_linear(input, linear_weight, linear_bias, autocast=autocast)
    rows = V.check_batch_chunk_size(batch_chunk_size)
    n_classes = linear_weight.shape[0]
    target_rows, lead = _rows_first(definition, input, target, n_classes)
    n = target_rows.shape[0]
    x = input.reshape(n, input.shape[-1])
    if definition.probs_function_name is not None:
        keywords["probs"] = False
    options = definition.options_from(**keywords)
    # The logits' size and dtype without their memory: what the loss's checks look at.
    proxy = input.new_empty(()).expand(n, n_classes)
    options = _rows_first_options(options, lead, n)
    shard = vocab_group is not None
    if shard:
        check_vocab_call(vocab_group, backend, target_rows, *options.tensors())
    options = definition.check(proxy, target_rows, options, False, shard=shard)
    path = "vocab" if shard else select_backend(backend, proxy, target_rows, *options.tensors())
    if path == "reference":
        logits = F.linear(x, linear_weight, linear_bias)
        out = run(
            definition.kernel,
            definition.reference,
            logits,
            target_rows,
            options,
            reduction,
            process_group,
            "reference",
        )
        return _shaped(out, reduction, lead, definition)
    family = definition.kernel
    if shard:
        # the sigmoid family's element count is global: counted in the pass, not folded
        known = vocab_known_denominator(family, proxy, target_rows, options)
    else:
        known = family.known_denominator(proxy, target_rows, options)
    plan = plan_reduction(reduction, process_group, proxy, known)
    finish_grad_input = None
    in_place = False
    # an elementwise loss over fewer rows than classes: blocks of classes (not with
    # vocab_group, whose ranks must run the same number of blocks)
    columns = None
    if not shard:
        columns = block_columns(n, n_classes, input.device, rows, not family.classes)
    block_classes = n_classes
    if shard:
        kernel, finish_grad_input, largest = _vocab_kernel(
            family, options, vocab_group, target_rows, n_classes, input.device, rows
        )
        block_classes = n_classes if largest is None else largest
    elif path == "triton":
        kernel = family.triton(options)
    elif path == "compiled":
        import functools

        # a block of classes is a strided view of the targets: kept 2-D, not copied flat
        flat = not family.classes and len(options.tensors()) == 0 and columns is None
        closed_form = family.closed_form(options)
        writes_in_place = gradient_in_place(closed_form)
        if writes_in_place is not None:
            closed_form, in_place = writes_in_place, True
        # backend="auto" never waits for a compile: while the block's graph compiles in a
        # background thread, the eager closed form computes the blocks (over slices of the
        # block, so its temporaries stay small)
        background = None
        if requested_backend(backend) == "auto":
            background = functools.partial(
                _chunked, closed_form, _EAGER_CHUNK_WHILE_COMPILING, flat
            )
        kernel = functools.partial(_run_compiled, closed_form, flat, background)
    else:
        kernel = family.closed_form(options)
    grad_enabled = torch.is_grad_enabled()
    needs = (
        input.requires_grad and grad_enabled,
        linear_weight.requires_grad and grad_enabled,
        linear_bias is not None and linear_bias.requires_grad and grad_enabled,
    )
    chunked = Plan(
        kernel=kernel,
        target=target_rows,
        options=options,
        rows=block_rows(n, block_classes, input.device, rows, in_place),
        mean_denominator=plan.fold,
        reduce=plan.reduce,
        per_row=family.classes,
        mm_dtype=mm_dtype,
        acc_dtype=compute_dtype(input.dtype),
        needs=needs,
        finish_grad_input=finish_grad_input,
        in_place=in_place,
        columns=columns,
    )
    out, denominator = run_plan(chunked, x, linear_weight, linear_bias)
    # with vocab_group a reduced sigmoid loss always has its global denominator: not used
    default = n if family.classes else n * n_classes
    out = plan.finish(out, denominator, default).to(output_dtype(input))
    return _shaped(out, reduction, lead, definition)


def _vocab_kernel(
    family: Any,
    options: Any,
    group: Any,
    target: torch.Tensor,
    local_classes: int,
    device: torch.device,
    batch_chunk_size: int | None = None,
) -> tuple[Any, Any, int | None]:
    """The block kernel, the ``grad_input`` hook of a vocab-parallel call, and the most
    classes a rank of the group holds (``None`` where ``batch_chunk_size`` sets the blocks):
    the blocks' rows are sized by it, so that every rank runs as many blocks -- each block's
    collectives pair up across the ranks, and uneven slices sized by their own counts would
    not (one more all-reduce of the counts for the sigmoid family, whose call needs no
    layout otherwise).

    Each rank's blocks are the logits of its slice of the classes, ``x_c W_r^T + b_r``; the
    kernel is the vocab-parallel closed form (:func:`crossent.linear._vocab.vocab_closed_form`),
    which returns the loss of all the classes and the gradient of the rank's logit slice, so
    ``grad_W`` and ``grad_b`` accumulate the rank's slice of the one-process gradients. Each
    rank's ``g_c W_r`` is only its classes' part of ``grad_input``: the hook all-reduces
    (SUM) the accumulated ``grad_input`` over ``group`` once, after the last block.

    The softmax family's layout (every rank's class range) is exchanged once for the call
    and the class indices are checked once against the total, not per block."""
    layout = None
    if family.classes or batch_chunk_size is None:
        layout = vocab_layout(group, local_classes, device)
    if family.classes and not target.is_floating_point():
        V.check_class_indices(target, layout.total, options.ignore_index)
    kernel = vocab_closed_form(
        family, options, group, layout=layout if family.classes else None, check_targets=False
    )

    def finish_grad_input(grad_input: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(grad_input, op=dist.ReduceOp.SUM, group=group)
        return grad_input

    largest = None if batch_chunk_size is not None else layout.largest
    return kernel, finish_grad_input, largest


def _shaped(out: torch.Tensor, reduction: str, lead: tuple[int, ...], definition) -> torch.Tensor:
    if reduction != "none":
        return out
    if definition.family == "softmax":
        return out.reshape(lead)
    return out.reshape(*lead, -1)


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: Any = None,
    batch_chunk_size: int | None = None,
    process_group: Any = None,
    vocab_group: Any = None,
    backend: str | None = None,
    **softmax_options: Any,
) -> torch.Tensor:
    r"""Cross entropy of a linear classifier head, computed in row blocks: the ``(N, V)``
    logits are never held whole.

    Use it for large vocabularies (language-model heads, extreme classification), where the
    logits and their gradient -- ``N x V x 4`` bytes each, 2 GB at ``N = 4096``,
    ``V = 128k`` -- dominate the memory of a step. A drop-in for
    :func:`torch.nn.functional.linear_cross_entropy` (same arguments, same defaults); equal,
    in value and in the gradients of ``input``, ``linear_weight`` and ``linear_bias``, to

    .. math::

        \ell = \operatorname{cross\_entropy}(x W^\top + b,\ t)

    i.e. to ``crossent.cross_entropy(F.linear(input, linear_weight, linear_bias), target,
    ...)`` with the same options. Each block of rows computes its logits (in float32 for
    float16 / bfloat16 operands; under ``torch.autocast`` the matmuls run in the autocast
    dtype, as ``F.linear`` would, and the loss in float32), the loss and the logits' gradient
    in one pass of the closed form, and the three gradients from it; the extra memory is the
    gradients of the operands plus one block (see the
    `Large vocabularies <https://crossent.readthedocs.io/large-vocabularies/>`_ guide).

    Args:
        input: the features, size ``(H)``, ``(N, H)`` or ``(..., H)``.
        linear_weight: the head's weight, size ``(V, H)`` (``nn.Linear(H, V).weight``).
        target: class indices, size ``(N)`` (the input's size without ``H``; integer dtype),
            or class probabilities, size ``(N, V)`` (floating point).
        linear_bias: the head's bias, size ``(V)``, or ``None`` (default).
        weight: optional per-class weight of size ``(V)``, as in :func:`crossent.cross_entropy`.
        reduction: ``"none"`` (one loss per row), ``"sum"``, ``"mean"`` (divided by the
            summed weights of the valid targets) or ``"global_mean"`` (the mean over every
            rank of a process group). Default: ``"mean"``.
        ignore_index: class-index targets equal to it contribute nothing and are not counted.
            ``None`` (default) means -100 for class indices, as in torch's
            ``linear_cross_entropy``; with probability targets a row filled with it is
            ignored (torch refuses the combination).
        label_smoothing: ``s`` in [0, 1), as in :func:`crossent.cross_entropy`. Default: 0.
        options: a :class:`torch.nn.LinearCrossEntropyOptions`, for code written for torch:
            its ``batch_chunk_size`` is used; its other fields (accumulation policies of
            torch's own kernel) do not apply here. ``None`` (default) does **not** switch the
            chunking off as it does in torch: the block size then comes from the memory
            budget.
        batch_chunk_size: rows per block; ``None`` (default): as many as keep one block of
            logits within 2**23 elements on CPU (with its gradient 64 MiB in float32),
            2**25 on GPUs.
        process_group: the group ``"global_mean"`` reduces over; ``None``: the default group.
        vocab_group: a ``torch.distributed`` process group whose ranks each hold a contiguous
            slice of the classes, in rank order (a vocab-parallel head, as in Megatron-LM;
            slices of any sizes, 0 included). Each rank passes the whole ``input``, its rows
            ``(V_r, H)`` of the head's weight (and ``(V_r)`` of ``linear_bias`` and
            ``weight``, ``(N, V_r)`` of probability targets) and the **global** class
            indices. Every rank returns the loss of all ``V`` classes; after ``backward()``
            ``linear_weight`` and ``linear_bias`` hold this rank's slice of the one-process
            gradients and ``input`` the whole one-process gradient (the ranks' parts
            all-reduced once per call). Every rank of the group must call it. Runs the
            eager closed form: ``backend`` must be ``"fused"``, ``"auto"`` or ``None``.
            ``None`` (default): ``linear_weight`` holds every class.
        backend: how each block's loss is computed (``"fused"``, ``"compiled"``, ``"triton"``,
            ``"reference"``: the unfused ``F.linear`` then the loss, or ``"auto"``); see
            :mod:`crossent.kernels`.
        **softmax_options: any further option :func:`crossent.cross_entropy` accepts.

    Shape:
        - input: ``(H)``, ``(N, H)`` or ``(..., H)``.
        - linear_weight: ``(V, H)``; linear_bias: ``(V)``.
        - target: ``()`` / ``(N)`` / ``(...)`` class indices, or ``(V)`` / ``(N, V)`` /
          ``(..., V)`` probabilities.
        - output: a scalar, or the input's size without ``H`` for ``reduction="none"``.

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example:
        >>> import torch, crossent
        >>> _ = torch.manual_seed(0)
        >>> x, head = torch.randn(6, 4), torch.nn.Linear(4, 10)
        >>> t = torch.tensor([0, 3, 9, 1, -100, 2])
        >>> fused = crossent.linear_cross_entropy(x, head.weight, t, linear_bias=head.bias)
        >>> unfused = crossent.cross_entropy(head(x), t)
        >>> torch.allclose(fused, unfused)
        True

    See also:
        :func:`linear_loss` (any crossent loss after the head), :func:`crossent.cross_entropy`,
        :class:`crossent.nn.LinearCrossEntropyLoss`.
    """
    if options is not None:
        given = getattr(options, "batch_chunk_size", None)
        if batch_chunk_size is not None and given is not None and given != batch_chunk_size:
            raise ValueError(
                f"Expected one block size, but got batch_chunk_size={batch_chunk_size} and "
                f"options.batch_chunk_size={given}. Pass one of them."
            )
        batch_chunk_size = batch_chunk_size if batch_chunk_size is not None else given
    if ignore_index is None and isinstance(target, torch.Tensor):
        ignore_index = None if target.is_floating_point() else -100
    return compute(
        CE,
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        reduction=reduction,
        process_group=process_group,
        vocab_group=vocab_group,
        backend=backend,
        batch_chunk_size=batch_chunk_size,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        **softmax_options,
    )


def linear_loss(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: str,
    linear_bias: torch.Tensor | None = None,
    reduction: str = "mean",
    batch_chunk_size: int | None = None,
    process_group: Any = None,
    vocab_group: Any = None,
    backend: str | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""Any crossent loss of a linear classifier head, computed in blocks: the ``(N, V)``
    logits are never held whole.

    Use it for a large label space with a loss other than cross entropy: extreme multi-label
    classification with the sigmoid focal loss or ASL, a large-vocabulary softmax focal
    loss. Equal, in value and in the gradients of ``input``, ``linear_weight`` and
    ``linear_bias``, to the loss named ``loss`` called on ``F.linear(input, linear_weight,
    linear_bias)`` with the same options:

    .. math::

        \ell = \operatorname{loss}(x W^\top + b,\ y)

    Memory and precision as :func:`linear_cross_entropy`, except that a sigmoid loss over
    fewer rows than classes (and no ``batch_chunk_size``) runs in blocks of classes over every
    row: ``N x C`` logits per block, ``C = 2**23 // N`` on CPU, ``2**25 // N`` on GPUs.

    Args:
        input: the features, size ``(H)``, ``(N, H)`` or ``(..., H)``.
        linear_weight: the head's weight, size ``(V, H)``.
        target: for the softmax losses (``"ce"``, ``"softmax_focal"``, ``"poly1"``) class
            indices of the input's size without ``H``, or class probabilities ``(..., V)``;
            for the sigmoid losses (``"bce"``, ``"focal"``, ``"asl"``, ``"poly1_focal"``)
            dense targets of size ``(..., V)`` (multi-hot or soft labels).
        loss: the loss's registry name or alias (``crossent explain`` lists them).
        linear_bias: the head's bias, size ``(V)``, or ``None`` (default).
        reduction: ``"none"``, ``"sum"``, ``"mean"`` or ``"global_mean"``, as the loss defines
            them. Default: ``"mean"``.
        batch_chunk_size: rows per block (blocks of rows for every loss); ``None``
            (default): from the memory budget.
        process_group: the group ``"global_mean"`` reduces over.
        vocab_group: the process group of a vocab-parallel head, as in
            :func:`linear_cross_entropy`: each rank passes its rows of ``linear_weight`` and
            ``linear_bias``, its slice of the per-class options (``weight``, ``alpha``,
            ``pos_weight``) and of dense targets, and the global class indices of the
            softmax losses. The softmax losses return the loss of all the classes on every
            rank; the sigmoid losses the sum or mean of all the classes, and for
            ``reduction="none"`` the ``(N, V_r)`` loss of the rank's own classes. The
            gradients: this rank's slice for the head, the whole one for ``input``.
        backend: as in :func:`linear_cross_entropy`.
        **options: the loss's own keyword options (``gamma=``, ``alpha=``, ``weight=``,
            ``ignore_index=``, ...), with its defaults; validated as the loss validates them.

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``); for
        ``reduction="none"`` one value per row (softmax losses) or per row and class
        (sigmoid losses).

    Example:
        >>> import torch, crossent
        >>> _ = torch.manual_seed(0)
        >>> x, head = torch.randn(6, 4), torch.nn.Linear(4, 10)
        >>> y = (torch.rand(6, 10) < 0.2).float()
        >>> fused = crossent.linear_loss(x, head.weight, y, loss="focal", gamma=2.0,
        ...                              linear_bias=head.bias)
        >>> torch.allclose(fused, crossent.sigmoid_focal_loss(head(x), y, gamma=2.0))
        True

    See also:
        :func:`linear_cross_entropy`, :class:`crossent.nn.LinearLoss`.
    """
    return compute(
        _definition(loss),
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        reduction=reduction,
        process_group=process_group,
        vocab_group=vocab_group,
        backend=backend,
        batch_chunk_size=batch_chunk_size,
        **options,
    )
