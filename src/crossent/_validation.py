"""The one place where inputs are checked and errors are worded.

Every message follows one pattern: name the argument, give the value, say what was expected
(and, where it helps, the fix). ``ValueError`` for a bad value, ``TypeError`` for a bad dtype
or type. Library code never uses ``assert`` (it vanishes under ``python -O``).

Two kinds of checks live here:

* metadata checks (shapes, dtypes, option values): always on, free, safe under ``torch.compile``;
* value checks that must read tensor data (probabilities in [0, 1], class indices in range):
  they synchronise with the host, so they run only in eager mode and can be switched off with
  :func:`set_value_checks` or the environment variable ``CROSSENT_VALUE_CHECKS=0``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

__all__ = [
    "BACKENDS",
    "REDUCTIONS",
    "check_backend",
    "check_batch_chunk_size",
    "check_broadcastable",
    "check_class_indices",
    "check_class_target",
    "check_class_vector",
    "check_finite_option",
    "check_floating_input",
    "check_ignore_index",
    "check_label_smoothing",
    "check_linear",
    "check_number",
    "check_probabilities",
    "check_process_group",
    "check_reduction",
    "check_same_shape",
    "check_sample_weight",
    "check_unit_targets",
    "class_dim_of",
    "ignore_index_for",
    "set_value_checks",
    "value_checks_enabled",
]

REDUCTIONS = ("none", "mean", "sum", "global_mean")
# How a loss is computed; crossent.kernels documents each and the automatic choice.
BACKENDS = ("auto", "reference", "fused", "compiled", "triton")

_value_checks = os.environ.get("CROSSENT_VALUE_CHECKS", "1").strip().lower() not in (
    "0",
    "false",
    "off",
    "no",
)


def set_value_checks(enabled: bool) -> bool:
    """Turn the data-reading input checks on or off; returns the previous setting.

    The checks that read tensor values (probabilities in [0, 1], class indices in range) are on
    by default in eager mode and always skipped while ``torch.compile`` traces (a
    data-dependent ``raise`` would break the graph). On CPU they read one reduction of the
    data on the host; on a GPU they never synchronise: each is an assertion on the device
    (``torch._assert_async``), which fails a later synchronising call with the check's
    message. Turning them off removes that small reduction kernel too.

    >>> import crossent
    >>> previous = crossent.set_value_checks(False)
    >>> _ = crossent.set_value_checks(previous)
    """
    global _value_checks
    previous = _value_checks
    _value_checks = bool(enabled)
    return previous


def value_checks_enabled() -> bool:
    """Whether checks that read tensor data should run now."""
    if not _value_checks:
        return False
    return not _is_compiling()


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        if compiler.is_compiling():
            return True
    return bool(torch.jit.is_scripting() or torch.jit.is_tracing())


def _fmt(value: object) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return repr(value.item())
    return repr(value)


def check_reduction(reduction: object) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        allowed = ", ".join(f'"{r}"' for r in REDUCTIONS)
        raise ValueError(f"Expected `reduction` to be one of {allowed}, but got {reduction!r}.")
    return reduction


def check_backend(backend: object, *, name: str = "backend") -> str:
    """A backend name (see :mod:`crossent.kernels`); ``name`` says where it came from."""
    if not isinstance(backend, str) or backend.strip().lower() not in BACKENDS:
        allowed = ", ".join(f'"{b}"' for b in BACKENDS)
        raise ValueError(f"Expected `{name}` to be one of {allowed}, but got {backend!r}.")
    return backend.strip().lower()


def check_floating_input(name: str, tensor: object) -> torch.Tensor:
    """The loss input (logits or probabilities) must be a floating-point tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        raise TypeError(
            f"Expected `{name}` to have a floating-point dtype, but got {tensor.dtype}. "
            f"Pass logits or probabilities as float, e.g. `{name}.float()`."
        )
    return tensor


def check_tensor(name: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(tensor).__name__}.")
    return tensor


def check_same_shape(input: torch.Tensor, target: torch.Tensor) -> None:
    """Elementwise losses never broadcast input against target: (N,) vs (N, 1) is an error."""
    if target.shape != input.shape:
        hint = ""
        if target.numel() == input.numel():
            hint = (
                " They hold the same number of elements: reshape one of them, e.g. "
                "`target.view_as(input)` -- broadcasting would silently compare every "
                "element with every other."
            )
        raise ValueError(
            f"Target size ({target.shape}) must be the same as input size ({input.shape}).{hint}"
        )


def check_broadcastable(name: str, tensor: torch.Tensor | None, shape: torch.Size) -> None:
    """`tensor` must broadcast to `shape` without changing it (torch's rule for weights)."""
    if tensor is None:
        return
    check_tensor(name, tensor)
    try:
        result = torch.broadcast_shapes(tensor.shape, shape)
    except RuntimeError:
        result = None
    if result != shape:
        raise ValueError(
            f"Expected `{name}` to broadcast to the input size {shape}, but got size "
            f"{tensor.shape}. Its dimensions are matched against the input's trailing "
            f"dimensions (e.g. size (C, 1, 1) for an input of size (N, C, H, W))."
        )
    if tensor.is_complex():
        raise TypeError(f"Expected `{name}` to be real, but got dtype {tensor.dtype}.")


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """A scalar option: a real finite number within [low, high] (bounds optional)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number, but got {_fmt(value)}.")
    value = float(value)
    # A chained comparison, not math.isfinite: under torch.compile(dynamic=True) a float
    # option can arrive as a symbolic float, which compares (a guard) but has no isfinite.
    if not -math.inf < value < math.inf:
        raise ValueError(f"Expected `{name}` to be finite, but got {value!r}.")
    if low is not None:
        if (low_inclusive and value < low) or (not low_inclusive and value <= low):
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"Expected `{name}` to be {op} {low}, but got {value!r}.")
    if high is not None:
        if (high_inclusive and value > high) or (not high_inclusive and value >= high):
            op = "<=" if high_inclusive else "<"
            raise ValueError(f"Expected `{name}` to be {op} {high}, but got {value!r}.")
    return value


def check_label_smoothing(value: object) -> float:
    return check_number("label_smoothing", value, low=0.0, high=1.0, high_inclusive=False)


def check_finite_option(name: str, value: object) -> float:
    return check_number(name, value)


def on_device(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s values are checked on its device: on an accelerator reading them on
    the host would synchronise (and break CUDA-graph capture), so a value check is an
    asynchronous device-side assertion (``torch._assert_async``) that fails the next
    synchronising call with the check's message -- as torch's own CUDA kernels report an
    index out of range -- instead of a ``ValueError`` naming the offending value."""
    return tensor.device.type not in ("cpu", "meta")


def _assert_on_device(ok: torch.Tensor, message: str) -> None:
    torch._assert_async(
        ok,
        message + " (checked on the device, which cannot name the value: run the same call "
        "on CPU tensors to see it)",
    )


def check_nonnegative_tensor(name: str, tensor: torch.Tensor | None) -> None:
    """Weights must be >= 0 (a value check, eager only)."""
    if tensor is None or not value_checks_enabled() or not tensor.numel():
        return
    if on_device(tensor):
        _assert_on_device(~(tensor < 0).any(), f"Expected `{name}` to be >= 0 everywhere")
        return
    if bool((tensor < 0).any()):
        bad = tensor[tensor < 0].flatten()[0].item()
        raise ValueError(f"Expected `{name}` to be >= 0 everywhere, but it holds {bad!r}.")


def _outside_unit_interval(
    tensor: torch.Tensor, message: str, ignore: float | None = None
) -> float | None:
    """The first value of ``tensor`` outside [0, 1] (NaN included) that is not ``ignore``, or
    ``None``. In the common case -- every value inside -- one reduction (``aminmax``) and one
    read on the host, no tensor of the input's size: the check costs a read of the data."""
    values = tensor
    if ignore is not None:
        values = torch.where(tensor == ignore, torch.zeros((), dtype=tensor.dtype), tensor)
    low, high = torch.aminmax(values)
    if on_device(values):  # on the device: no host read, the assertion is the check
        _assert_on_device((low >= 0) & (high <= 1), message)
        return None
    if low.item() >= 0 and high.item() <= 1:  # a NaN fails both comparisons
        return None
    bad = (values < 0) | (values > 1)
    if values.is_floating_point():
        bad = bad | torch.isnan(values)
    return values[bad].flatten()[0].item()


def check_probabilities(name: str, tensor: torch.Tensor) -> None:
    """Probabilities must lie in [0, 1] (a value check, eager only)."""
    if not value_checks_enabled() or tensor.numel() == 0:
        return
    expected = f"Expected `{name}` to hold probabilities in [0, 1]"
    value = _outside_unit_interval(tensor, expected)
    if value is not None:
        raise ValueError(
            f"{expected}, but it holds {value!r}. "
            f"If these are logits (raw scores), use the logits form of the loss "
            f"(e.g. `binary_cross_entropy_with_logits` or `sigmoid_focal_loss`)."
        )


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(f'"{c}"' for c in choices)
        raise ValueError(f"Expected `{name}` to be one of {allowed}, but got {value!r}.")
    return value


# --------------------------------------------------------------------------------------------
# The softmax (multi-class) family: a class dimension, class-index or class-probability targets
# --------------------------------------------------------------------------------------------


def class_dim_of(input: torch.Tensor) -> int:
    """The class dimension of a multi-class input: 0 for ``(C,)``, else 1 (torch's convention)."""
    if input.dim() == 0:
        raise ValueError(
            "Expected `input` to have a class dimension, i.e. size (C), (N, C) or "
            f"(N, C, d1, ..., dk), but got size {input.shape}."
        )
    return 0 if input.dim() == 1 else 1


def check_class_target(input: torch.Tensor, target: object, *, shard: bool = False) -> bool:
    """A multi-class target: class indices (integer dtype, the input's size without the class
    dimension) or class probabilities (floating dtype, the input's size).

    ``shard``: the input is one rank's slice of the classes (``vocab_group``), which may hold
    no class at all. Returns True for class indices, False for class probabilities.
    """
    target = check_tensor("target", target)
    class_dim = class_dim_of(input)
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"Expected `target` to hold class indices (an integer dtype) or class probabilities "
            f"(a floating-point dtype), but got {target.dtype}. For one-hot targets "
            f"pass `target.float()`; for indices, `target.long()`."
        )
    if input.shape[class_dim] == 0 and not shard:
        raise ValueError(
            f"Expected `input` to have at least one class along dimension {class_dim}, but got "
            f"size {input.shape}."
        )
    index_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    if target.is_floating_point():
        if target.shape != input.shape:
            hint = ""
            if target.shape == index_shape:
                hint = (
                    " It has the size of class-index targets: class indices must have an "
                    "integer dtype, e.g. `target.long()`."
                )
            raise ValueError(
                f"Target size ({target.shape}) must be the same as input size "
                f"({input.shape}) for class-probability (floating-point) targets.{hint}"
            )
        return False
    if target.shape != index_shape:
        hint = ""
        if target.shape == input.shape:
            hint = (
                " It has the input's size: for one-hot or probability targets pass a "
                "floating-point tensor, e.g. `target.float()`."
            )
        raise ValueError(
            f"Expected class-index `target` to have size {index_shape} (the input size "
            f"{input.shape} without its class dimension {class_dim}), but got size "
            f"{target.shape}.{hint}"
        )
    return True


def check_ignore_index(value: object) -> int | None:
    """``ignore_index`` of the multi-class losses: an integer, or None (nothing is ignored)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `ignore_index` to be an integer or None, but got {_fmt(value)}.")
    return value


def check_class_vector(
    name: str,
    tensor: torch.Tensor | None,
    num_classes: int,
    *,
    allow_scalar: bool = False,
    floating: bool = False,
    nonnegative: bool = False,
) -> None:
    """A per-class option (``weight``, ``alpha``): a real 1-D tensor of length C.

    With ``allow_scalar`` a 0-dimensional tensor is accepted too (one value for every class);
    with ``floating`` the dtype must be floating-point (torch's rule for ``weight``). With
    ``nonnegative`` every value must be >= 0 (a value check, eager only): ``alpha``, whose
    paper meaning is a share. ``weight`` may be negative, as in torch, in both families.
    """
    if tensor is None:
        return
    check_tensor(name, tensor)
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"Expected `{name}` to be a real tensor, but got dtype {tensor.dtype}.")
    if floating and not tensor.is_floating_point():
        raise TypeError(
            f"Expected `{name}` to have a floating-point dtype, but got {tensor.dtype}. "
            f"Pass `{name}.float()`."
        )
    if not (tensor.dim() == 1 and tensor.shape[0] == num_classes) and not (
        allow_scalar and tensor.dim() == 0
    ):
        what = "a number or a tensor" if allow_scalar else "a tensor"
        raise ValueError(
            f"Expected `{name}` to be {what} of size ({num_classes},), one value per class "
            f"(C = {num_classes}), but got size {tensor.shape}."
        )
    if nonnegative:
        check_nonnegative_tensor(name, tensor)


def check_sample_weight(tensor: object, input: torch.Tensor) -> None:
    """``sample_weight`` of the multi-class losses: a real floating-point tensor of the
    per-sample loss's size (the input's without its class dimension), finite everywhere (a
    value check, eager only). Negative values are accepted, as for ``weight``."""
    if tensor is None:
        return
    check_tensor("sample_weight", tensor)
    if not tensor.is_floating_point():
        raise TypeError(
            f"Expected `sample_weight` to have a floating-point dtype, but got {tensor.dtype}. "
            f"Pass `sample_weight.float()`."
        )
    class_dim = class_dim_of(input)
    shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    if tensor.shape != shape:
        raise ValueError(
            f"Expected `sample_weight` to have size {shape} (one weight per sample: the input "
            f"size {input.shape} without its class dimension {class_dim}), but got size "
            f"{tensor.shape}."
        )
    if not value_checks_enabled() or tensor.numel() == 0:
        return
    if not bool(torch.isfinite(tensor).all()):
        bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
        raise ValueError(f"Expected `sample_weight` to be finite everywhere, but it holds {bad!r}.")


def ignore_index_for(target: torch.Tensor, ignore_index: float | None) -> float | None:
    """``ignore_index`` as the target can match it: ``None`` (nothing is ignored) where an
    integer or bool target cannot hold the value. Compared in the target's dtype it would
    wrap instead (300 is 44 in int8, -100 is 156 in uint8) and ignore the wrong targets."""
    if ignore_index is None or target.is_floating_point():
        return ignore_index
    if target.dtype == torch.bool:
        low, high = 0, 1
    else:
        info = torch.iinfo(target.dtype)
        low, high = info.min, info.max
    if low <= ignore_index <= high and float(ignore_index).is_integer():
        return ignore_index
    return None


def check_unit_targets(name: str, target: torch.Tensor, ignore_index: float | None) -> None:
    """Targets in [0, 1] (or equal to ``ignore_index``) for losses whose math is undefined
    outside, such as a focal factor ``(1 - p_t)^gamma`` (a value check, eager only)."""
    if not value_checks_enabled() or target.numel() == 0 or target.dtype == torch.bool:
        return
    expected = (
        f"Expected `target` to hold values in [0, 1] for {name}, whose factor "
        f"(1 - p_t)^gamma is undefined outside"
    )
    value = _outside_unit_interval(target, expected, ignore_index)
    if value is not None:
        raise ValueError(
            f"{expected}, but it holds {value!r}. Rescale the "
            f"targets, or mark positions to skip with `ignore_index`."
        )


def check_class_indices(
    target: torch.Tensor, num_classes: int | torch.Tensor, ignore_index: int | None
) -> None:
    """Class indices must lie in [0, C) unless they equal ``ignore_index`` (a value check). In
    the common case one reduction (``aminmax``) and two reads on the host; on an accelerator an
    assertion on the device (:func:`on_device`). ``num_classes`` may be a 0-dim tensor on the
    target's device (the total of a ``vocab_group``'s slices, known only there): it is read
    on the host only for a CPU target."""
    if not value_checks_enabled() or target.numel() == 0:
        return
    ignored = "" if ignore_index is None else f" or equal to `ignore_index` ({ignore_index})"
    if isinstance(num_classes, torch.Tensor) and on_device(target):
        expected = (
            f"Expected `target` to hold class indices in [0, C) for the C classes of every "
            f"rank of `vocab_group`{ignored}"
        )
    else:
        num_classes = int(num_classes)
        expected = (
            f"Expected `target` to hold class indices in [0, {num_classes - 1}] for an input "
            f"with C = {num_classes} classes{ignored}"
        )
    if on_device(target):
        ok = (target >= 0) & (target < num_classes)
        if ignore_index is not None:
            ok = ok | (target == ignore_index)
        _assert_on_device(ok.all(), expected)
        return
    low, high = torch.aminmax(target)
    if low.item() >= 0 and high.item() < num_classes:
        return
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad = bad & (target != ignore_index)
    if bool(bad.any()):
        value = target[bad].flatten()[0].item()
        raise ValueError(f"{expected}, but it holds {value}.")


def check_process_group(process_group: object, reduction: str) -> None:
    """``process_group`` only means something to ``"global_mean"``: never accept and ignore it."""
    if process_group is not None and reduction != "global_mean":
        raise ValueError(
            f'Expected `reduction` to be "global_mean" when `process_group` is given, but got '
            f'{reduction!r}. Pass reduction="global_mean" to average over the group, or drop '
            f"`process_group`."
        )


# ---- fused linear + loss (crossent.linear) ---------------------------------------------------


def check_linear(
    input: object, linear_weight: object, linear_bias: object, *, autocast: bool = False
) -> None:
    """The operands of a fused linear + loss: ``input`` of size ``(..., H)``, ``linear_weight``
    of size ``(V, H)``, ``linear_bias`` of size ``(V,)`` or None; floating point, on one
    device, of one dtype (unless ``autocast`` casts them, as it would for ``F.linear``)."""
    input = check_floating_input("input", input)
    linear_weight = check_floating_input("linear_weight", linear_weight)
    if input.dim() == 0:
        raise ValueError(
            "Expected `input` to have a feature dimension, i.e. size (H) or (N, H) (or "
            f"(..., H)), but got size {input.shape}."
        )
    if linear_weight.dim() != 2:
        raise ValueError(
            "Expected `linear_weight` to be 2-D, of size (num_classes, in_features), but got "
            f"size {linear_weight.shape}. Pass the head's `weight` (nn.Linear stores it as "
            f"(out_features, in_features))."
        )
    if input.shape[-1] != linear_weight.shape[1]:
        raise ValueError(
            f"Expected the last dimension of `input` ({input.shape[-1]}) to equal "
            f"`linear_weight`'s in_features ({linear_weight.shape[1]}), but `input` has size "
            f"{input.shape} and `linear_weight` {linear_weight.shape}."
        )
    tensors = [("linear_weight", linear_weight)]
    if linear_bias is not None:
        linear_bias = check_floating_input("linear_bias", linear_bias)
        if linear_bias.shape != linear_weight.shape[:1]:
            raise ValueError(
                f"Expected `linear_bias` to have size ({linear_weight.shape[0]},) (one value "
                f"per class of `linear_weight`), but got size {linear_bias.shape}."
            )
        tensors.append(("linear_bias", linear_bias))
    for name, tensor in tensors:
        if tensor.device != input.device:
            raise ValueError(
                f"Expected `{name}` on the input's device ({input.device}), but it is on "
                f"{tensor.device}. Move it with `.to(input.device)`."
            )
        if tensor.dtype != input.dtype and not autocast:
            raise TypeError(
                f"Expected `{name}` to have the input's dtype ({input.dtype}), as F.linear "
                f"requires outside torch.autocast, but got {tensor.dtype}. Cast one of them, "
                f"e.g. `{name}.to(input.dtype)`."
            )


def check_batch_chunk_size(value: object) -> int | None:
    """``batch_chunk_size`` of the fused linear + loss: a positive integer, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Expected `batch_chunk_size` to be a positive integer or None (chosen from a "
            f"memory budget), but got {_fmt(value)}."
        )
    return value
