"""Diagnose model outputs and targets before they go into a loss.

:func:`diagnose` infers the task (binary, multi-label, multi-class with index / one-hot /
soft targets), recommends a loss and says why, and finds the mistakes that cost people days:
probabilities fed to a logits loss (the double sigmoid / softmax), multi-hot targets given to a
softmax loss, class indices given to a sigmoid loss, float targets holding indices, indices out
of range, shapes that would broadcast silently, NaN / inf, saturated logits, and class
imbalance -- with concrete ``pos_weight``, focal ``alpha`` and class weights computed from the
data by :mod:`crossent.weights`.

Every finding has a stable code (:data:`CHECKS` lists them), a severity, a one-line message
with the numbers that triggered it, and the fix. Severities: ``"error"`` (the loss would fail
or compute something else), ``"warning"`` (a likely mistake) and ``"info"`` (a note: advice,
such as class imbalance, on data that is not wrong). ``Diagnosis.exit_code`` is 2 for errors,
1 for warnings, 0 for notes only or nothing (``crossent doctor`` exits with it; its
``--strict`` makes notes exit 1).

>>> import torch
>>> from crossent.doctor import diagnose
>>> logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0], [-1.0, 0.2, 2.5]])
>>> report = diagnose(logits, torch.tensor([0, 1, 2]), loss="ce")
>>> report.task, report.recommended_loss, report.exit_code
('multi-class', 'ce', 0)
>>> report = diagnose(torch.softmax(logits, dim=1), torch.tensor([0, 1, 2]), loss="ce")
>>> [f.code for f in report.findings], report.exit_code
(['D010'], 2)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crossent.registry import LossSpec, format_spec, get_loss, parse_loss_spec

__all__ = ["CHECKS", "Check", "Diagnosis", "Finding", "TensorSummary", "diagnose"]

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Check:
    """One kind of finding: its stable code and name, severity, and what it detects."""

    code: str
    name: str
    severity: str
    detects: str


_CHECK_LIST = [
    Check("D001", "nonfinite-output", ERROR, "NaN or inf in the outputs"),
    Check("D002", "nonfinite-target", ERROR, "NaN or inf in the targets"),
    Check("D003", "silent-broadcast", ERROR, "shapes that differ but hold the same elements"),
    Check("D004", "shape-mismatch", ERROR, "output and target shapes no loss can pair"),
    Check("D005", "integer-output", ERROR, "outputs that are not floating point"),
    Check("D006", "empty", ERROR, "outputs or targets without elements"),
    Check("D010", "double-softmax", ERROR, "softmax probabilities going into a softmax loss"),
    Check("D011", "double-sigmoid", WARNING, "probabilities going into a sigmoid logits loss"),
    Check("D012", "logits-into-probability-loss", ERROR, "outputs outside [0, 1] for --probs"),
    Check("D020", "multi-hot-to-softmax", ERROR, "multi-hot targets given to a softmax loss"),
    Check("D021", "index-to-sigmoid", ERROR, "class-index targets given to a sigmoid loss"),
    Check("D022", "one-hot-targets", INFO, "one-hot targets where class indices would do"),
    Check("D023", "exclusive-to-sigmoid", WARNING, "one class per sample, but a sigmoid loss"),
    Check("D024", "float-index-targets", ERROR, "class indices stored as floats"),
    Check("D025", "index-out-of-range", ERROR, "class indices outside [0, C)"),
    Check("D026", "target-out-of-range", ERROR, "sigmoid-loss targets outside [0, 1]"),
    Check("D030", "saturated-logits", WARNING, "logits so large the sigmoid/softmax saturates"),
    Check("D040", "imbalance", INFO, "a class or label at least 10 times rarer than another"),
    Check("D041", "absent-class", WARNING, "a class or label that never occurs"),
    Check("D042", "ignored-targets", INFO, "targets equal to ignore_index"),
]
CHECKS: dict[str, Check] = {c.code: c for c in _CHECK_LIST}

# Thresholds, each with its reason.
SATURATION = 15.0  # sigmoid(15) = 1 - 3.1e-7: in float32 p rounds to within 3 ulp of 1
SATURATED_SHARE = 0.1  # a trained model saturates on easy examples; a tenth of them is a pattern
PROB_SATURATION = 1e-6  # p within 1e-6 of 0 or 1: the sigmoid's gradient p (1 - p) < 1e-6
IMBALANCE_RATIO = 10.0  # "1:100" in the tutorials; 10:1 is where re-weighting starts to matter
ROW_SUM_TOL = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; 1e-3 also catches rounding
TORCH_IGNORE_INDEX = -100  # torch's (and crossent's softmax family's) default ignore_index


@dataclass
class Finding:
    code: str
    name: str
    severity: str
    message: str
    fix: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class TensorSummary:
    shape: list[int]
    dtype: str
    min: float | None
    max: float | None
    nan: int
    inf: int
    unique: list[float]
    num_unique: int


@dataclass
class Diagnosis:
    """What :func:`diagnose` found; ``crossent doctor`` renders it (or dumps it as JSON)."""

    task: str
    target_format: str
    num_classes: int | None
    recommended_loss: str
    reason: str
    loss: str | None
    output: TensorSummary
    target: TensorSummary
    prevalence: list[float] | None
    counts: list[float] | None
    suggestions: dict[str, str]
    findings: list[Finding]

    @property
    def exit_code(self) -> int:
        """2 errors, 1 warnings (likely mistakes), 0 notes (advice) only or nothing."""
        severities = {f.severity for f in self.findings}
        return 2 if ERROR in severities else 1 if WARNING in severities else 0

    @property
    def codes(self) -> list[str]:
        return [f.code for f in self.findings]


def _summary(t: torch.Tensor) -> TensorSummary:
    values = t.detach().cpu()
    if values.dtype == torch.bool:
        values = values.to(torch.int64)
    finite = values[torch.isfinite(values)] if values.is_floating_point() else values.flatten()
    nan = int(torch.isnan(values).sum()) if values.is_floating_point() else 0
    inf = int(torch.isinf(values).sum()) if values.is_floating_point() else 0
    unique = torch.unique(finite) if finite.numel() else finite
    return TensorSummary(
        shape=list(t.shape),
        dtype=str(t.dtype).replace("torch.", ""),
        min=float(finite.min()) if finite.numel() else None,
        max=float(finite.max()) if finite.numel() else None,
        nan=nan,
        inf=inf,
        # The distinct values (the tutorials' `targets.unique()`), when there are few of them.
        unique=[float(v) for v in unique] if unique.numel() <= 12 else [],
        num_unique=int(unique.numel()),
    )


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"Expected `{name}` to be a tensor, an array or nested lists of numbers, but got "
            f"{type(value).__name__}."
        ) from None


def _shape(s: Any) -> str:
    return "(" + ", ".join(str(int(d)) for d in s) + ("," if len(s) == 1 else "") + ")"


def _list(values: Any, digits: int = 3) -> str:
    return "[" + ", ".join(f"{float(v):.{digits}g}" for v in values) + "]"


def _labels_text(idx: list[int]) -> str:
    return f"label {idx[0]} is" if len(idx) == 1 else f"labels {_few(idx)} are"


def _few(values: list[Any], limit: int = 6) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


class _Report:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(self, code: str, message: str, fix: str, **data: Any) -> None:
        check = CHECKS[code]
        self.findings.append(Finding(code, check.name, check.severity, message, fix, data))


def diagnose(
    output: Any,
    target: Any,
    loss: str | LossSpec | None = None,
    *,
    probs: bool = False,
) -> Diagnosis:
    """Diagnose model outputs and targets (and the loss they are meant for).

    Args:
        output: the model's outputs, as they would go into the loss (a tensor, array or lists).
        target: the targets.
        loss: the loss they go into (a registered name or ``"name:option=value"`` spec);
            ``None`` checks them against the recommended loss.
        probs: the outputs are meant to be probabilities (the loss's probability form).

    Returns:
        A :class:`Diagnosis`: the task, the recommended loss and why, summaries of both
        tensors, class prevalence, suggested settings, and the findings.
    """
    out_t = _as_tensor(output, "output")
    tgt_t = _as_tensor(target, "target")
    spec: LossSpec | None = None
    options: dict[str, Any] = {}
    if isinstance(loss, LossSpec):
        spec = loss
    elif loss is not None:
        spec, options = parse_loss_spec(str(loss))
    if probs and spec is not None and spec.probs is None:
        raise ValueError(f"Loss {spec.name!r} has no probability form: it takes logits.")
    report = _Report()
    d = _Diagnoser(out_t, tgt_t, spec, options, probs, report)
    d.run()
    return Diagnosis(
        task=d.task,
        target_format=d.target_format,
        num_classes=d.num_classes,
        recommended_loss=d.recommended,
        reason=d.reason,
        loss=format_spec(spec, options) if spec is not None else None,
        output=_summary(out_t),
        target=_summary(tgt_t),
        prevalence=d.prevalence,
        counts=d.counts,
        suggestions=d.suggestions,
        findings=report.findings,
    )


class _Diagnoser:
    def __init__(
        self,
        output: torch.Tensor,
        target: torch.Tensor,
        spec: LossSpec | None,
        options: dict[str, Any],
        probs: bool,
        report: _Report,
    ) -> None:
        self.raw_output, self.raw_target = output, target
        self.spec, self.options, self.probs, self.report = spec, options, probs, report
        self.task = "unknown"
        self.target_format = "unknown"
        self.num_classes: int | None = None
        self.recommended = "bce"
        self.reason = "the task could not be inferred (see the errors)"
        self.prevalence: list[float] | None = None
        self.counts: list[float] | None = None
        self.suggestions: dict[str, str] = {}
        self.layout = "unknown"

    # -- the whole run --------------------------------------------------------------------------

    def run(self) -> None:
        add = self.report.add
        output, target = self.raw_output.detach().cpu(), self.raw_target.detach().cpu()
        if output.numel() == 0 or target.numel() == 0:
            add(
                "D006",
                f"output has {output.numel()} elements and target {target.numel()}: there is "
                f"nothing to compute a loss on.",
                "Check the data loader and the batch (an empty split or a filter that removed "
                "everything).",
                output_shape=list(output.shape),
                target_shape=list(target.shape),
            )
            return
        if output.is_complex() or target.is_complex():
            raise TypeError("Expected real outputs and targets, but got a complex tensor.")
        if not output.is_floating_point():
            add(
                "D005",
                f"outputs have dtype {output.dtype}; a loss needs floating-point logits or "
                f"probabilities (and integer outputs carry no gradient).",
                "Return the last layer's raw float output; do not argmax or round it before "
                "the loss (that belongs to evaluation).",
                dtype=str(output.dtype),
            )
        self.out = output.to(torch.float64)
        self.tgt = target.to(torch.float64) if target.dtype != torch.float64 else target
        self.target_is_float = target.is_floating_point()
        self._nonfinite()
        if not self._layout():
            return
        self._target_values()
        self._infer()
        self._loss_checks()
        self._probability_checks()
        self._saturation()
        self._imbalance()

    # -- NaN / inf --------------------------------------------------------------------------

    def _nonfinite(self) -> None:
        for code, name, t in (("D001", "output", self.out), ("D002", "target", self.tgt)):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            if nan or inf:
                where = (~torch.isfinite(t)).nonzero()[0].tolist()
                fix = (
                    "Find where they first appear (torch.autograd.set_detect_anomaly, or check "
                    "the inputs and the previous step's loss); lower the learning rate or clip "
                    "gradients; compute probabilities in log space (logits losses)."
                    if name == "output"
                    else "Clean the labels: NaN usually marks a missing label -- drop those "
                    "samples or mark them with an ignore_index value."
                )
                self.report.add(
                    code,
                    f"{name} holds {nan} NaN and {inf} inf of {t.numel()} values (first at "
                    f"index {where}).",
                    fix,
                    nan=nan,
                    inf=inf,
                    first=where,
                )
        self.out_ok = torch.isfinite(self.out)
        self.tgt_ok = torch.isfinite(self.tgt)

    # -- shapes -----------------------------------------------------------------------------

    def _layout(self) -> bool:
        """Pair output and target: "same" shape, "index" (class dim 1 dropped), or stop."""
        so, st = tuple(self.out.shape), tuple(self.tgt.shape)
        if so == st:
            self.layout = "same"
            return True
        if len(so) == len(st) + 1 and so[0] == st[0] and so[2:] == st[1:] and so[1] > 1:
            self.layout = "index"
            self.num_classes = so[1]
            return True
        if self.out.numel() == self.tgt.numel():
            try:
                broadcast = tuple(torch.broadcast_shapes(so, st))
            except RuntimeError:
                broadcast = None
            n = self.out.numel()
            if broadcast is not None and math.prod(broadcast) > n:
                message = (
                    f"output {_shape(so)} and target {_shape(st)} would broadcast to "
                    f"{_shape(broadcast)}: an elementwise formula compares every output with "
                    f"every target ({math.prod(broadcast)} pairs instead of {n}); torch's BCE "
                    f"raises, MSE and hand-written losses silently do it."
                )
            else:
                message = (
                    f"output {_shape(so)} and target {_shape(st)} hold the same {n} elements "
                    f"in different shapes: torch's losses raise \"Target size must be the same "
                    f'as input size", and any later reshape risks pairing the wrong elements.'
                )
            fix = (
                "Make the shapes equal before the loss: `output.squeeze(-1)` or "
                "`target.view_as(output)`."
            )
            self.report.add(
                "D003",
                message,
                fix,
                output_shape=list(so),
                target_shape=list(st),
                broadcast_shape=list(broadcast) if broadcast is not None else None,
            )
            # Diagnose the rest as the user meant it: the same elements, the output's shape.
            self.tgt = self.tgt.reshape(so)
            self.tgt_ok = self.tgt_ok.reshape(so)
            self.layout = "same"
            return True
        expected = (
            f"{_shape(so)} (binary / multi-label) or {_shape((so[0], *so[2:]))} of class "
            f"indices (multi-class)"
            if len(so) >= 2
            else f"{_shape(so)}"
        )
        self.report.add(
            "D004",
            f"output {_shape(so)} and target {_shape(st)} cannot be paired: the target should "
            f"be {expected}.",
            "Check that outputs and targets come from the same batch and that the last layer "
            "has one output per label (sigmoid) or per class (softmax).",
            output_shape=list(so),
            target_shape=list(st),
        )
        return False

    # -- target values ----------------------------------------------------------------------

    def _ignore_value(self) -> float | None:
        if "ignore_index" in self.options:
            value = self.options["ignore_index"]
            return None if value is None else float(value)
        if self.layout == "index" or (self.spec is not None and self.spec.family == "softmax"):
            return float(TORCH_IGNORE_INDEX)
        return None

    def _target_values(self) -> None:
        ignore = self._ignore_value()
        self.ignored = (self.tgt == ignore) if ignore is not None else torch.zeros_like(self.tgt_ok)
        self.ignore = ignore
        keep = self.tgt_ok & ~self.ignored
        self.keep = keep
        values = self.tgt[keep]
        self.values = values
        self.integral = bool((values == values.round()).all()) if values.numel() else True
        self.binary_values = bool(((values == 0) | (values == 1)).all())
        self.in01 = bool(((values >= 0) & (values <= 1)).all())
        n_ignored = int(self.ignored.sum())
        if n_ignored:
            ignore_text = f"{ignore:g}"
            self.report.add(
                "D042",
                f"{n_ignored} of {self.tgt.numel()} targets equal {ignore_text} and will be "
                f"ignored by the loss.",
                f"Intended? torch's cross_entropy ignores {TORCH_IGNORE_INDEX} by default; "
                f"crossent's softmax losses too, its sigmoid losses only with "
                f"ignore_index={ignore_text}.",
                count=n_ignored,
                ignore_index=ignore,
            )

    # -- task -------------------------------------------------------------------------------

    def _rows(self) -> torch.Tensor:
        """The target with the class/label dimension last, flattened to (positions, C)."""
        t = self.tgt
        if t.dim() == 1:
            return t.reshape(-1, 1)
        return t.movedim(1, -1).reshape(-1, t.shape[1])

    def _infer(self) -> None:
        add = self.report.add
        out = self.out
        if self.layout == "index":
            c = self.num_classes
            self.task, self.target_format = "multi-class", "index"
            self.recommended = "ce"
            self.reason = (
                f"each sample has exactly one of {c} classes (class-index targets): softmax "
                f"cross entropy on the raw {_shape(out.shape)} logits"
            )
            if not self.integral:
                bad = self.values[self.values != self.values.round()][:3].tolist()
                add(
                    "D004",
                    f"target {_shape(self.tgt.shape)} against output {_shape(out.shape)} should "
                    f"hold class indices, but holds non-integers such as {_list(bad)}.",
                    f"For soft labels give a {_shape(out.shape)} target of class probabilities; "
                    f"for one score per sample use an output of shape {_shape(self.tgt.shape)}.",
                    examples=bad,
                )
                self.task, self.target_format = "unknown", "unknown"
                return
            if self.target_is_float:
                add(
                    "D024",
                    f"class indices are stored as {self.raw_target.dtype} (values "
                    f"{_few([int(v) for v in self.values.unique()[:8].tolist()])}); index "
                    f"targets must be integers (torch raises, or reads float targets as "
                    f"probabilities when the shapes match).",
                    "Convert them: `target = target.long()`.",
                    dtype=str(self.raw_target.dtype),
                )
            bad = (self.values < 0) | (self.values >= c)
            if bool(bad.any()):
                wrong = sorted({int(v) for v in self.values[bad].tolist()})
                lo, hi = int(self.values.min()), int(self.values.max())
                one_based = lo >= 1 and hi == c
                fix = (
                    "The labels look 1-based: use `target - 1`."
                    if one_based
                    else f"The output has {c} columns: give the model {hi + 1} outputs, or "
                    f"remap the labels to 0..{c - 1}; mark ignored targets with ignore_index."
                )
                add(
                    "D025",
                    f"{int(bad.sum())} class indices lie outside [0, {c - 1}] for a "
                    f"{c}-class output (values {_few(wrong)}; the targets range over "
                    f"{lo}..{hi}).",
                    fix,
                    count=int(bad.sum()),
                    values=wrong[:20],
                    num_classes=c,
                )
            return

        # The same shape: elementwise (sigmoid) targets, or class rows along dimension 1.
        c = out.shape[1] if out.dim() >= 2 else 1
        rows = self._rows()
        keep_rows = self._rows_keep()
        self.num_classes = c
        if self.binary_values:
            if c >= 2 and bool((rows[keep_rows].sum(1) == 1).all()) and keep_rows.any():
                self._set_one_hot(c)
            elif c >= 2:
                self.task, self.target_format = "multi-label", "multi-hot"
                self.recommended = "bce"
                per_row = rows[keep_rows].sum(1)
                self.reason = (
                    f"{c} independent labels (rows hold {int(per_row.min())} to "
                    f"{int(per_row.max())} positives): a sigmoid per label, BCE with logits"
                )
            else:
                self._set_binary()
        elif self.in01:
            row_sums = rows[keep_rows].sum(1)
            if c >= 2 and bool(((row_sums - 1).abs() <= ROW_SUM_TOL).all()):
                self.task, self.target_format = "multi-class (soft labels)", "probabilities"
                self.recommended = "ce"
                self.reason = (
                    f"rows of class probabilities over {c} classes (each sums to 1): softmax "
                    f"cross entropy with probability targets"
                )
            else:
                self._set_binary(soft=True, labels=c)
        elif self.integral and float(self.values.min()) >= 0:
            k = int(self.values.max()) + 1
            self.task, self.target_format = "multi-class", "index"
            self.recommended = "ce"
            self.reason = f"class indices 0..{k - 1}: softmax cross entropy on (N, {k}) logits"
            self.num_classes = k
            add(
                "D021",
                f"targets hold class indices (values {_few(self._uniq())}) but have the "
                f"output's shape {_shape(out.shape)}: one score per sample cannot choose among "
                f"{k} classes, and a sigmoid loss reads them as probabilities > 1.",
                f"Give the model {k} outputs per sample, shape (N, {k}), and use a softmax "
                f"loss (ce) with these indices as an int64 target of shape (N,).",
                values=self._uniq()[:20],
            )
        else:
            values = self._uniq()
            self.task, self.target_format = "binary", "out-of-range"
            minus_one = set(values) <= {-1.0, 1.0} or set(values) <= {-1.0, 0.0, 1.0}
            fix = (
                "Labels in {-1, 1} are the hinge / SVM convention: map them with "
                "`(target + 1) / 2`."
                if minus_one
                else "Targets of sigmoid losses are probabilities in [0, 1]: rescale them, or "
                "mark ignored entries with ignore_index."
            )
            self.recommended = "bce"
            self.reason = "one yes/no decision per element: BCE with logits"
            add(
                "D026",
                f"targets hold values outside [0, 1] ({_few(values)}); a sigmoid loss needs "
                f"targets in [0, 1].",
                fix,
                values=values[:20],
            )

    def _uniq(self) -> list[float | int]:
        vals = torch.unique(self.values).tolist()
        return [int(v) if float(v).is_integer() else v for v in vals]

    def _rows_keep(self) -> torch.Tensor:
        ok = self.tgt_ok & ~self.ignored
        if ok.dim() == 1:
            return ok
        return ok.movedim(1, -1).reshape(-1, ok.shape[1]).all(1)

    def _set_binary(self, *, soft: bool = False, labels: int = 1) -> None:
        kind = "multi-label" if labels >= 2 else "binary"
        self.task = kind + (" (soft labels)" if soft else "")
        self.target_format = "soft" if soft else ("multi-hot" if labels >= 2 else "binary")
        self.recommended = "bce"
        if labels >= 2:
            self.reason = f"{labels} independent labels: a sigmoid per label, BCE with logits"
        else:
            self.reason = "one yes/no decision per element: BCE with logits (one logit each)"

    def _set_one_hot(self, c: int) -> None:
        self.task, self.target_format = "multi-class", "one-hot"
        self.recommended = "ce"
        self.reason = (
            f"every row has exactly one positive of {c}: mutually exclusive classes, softmax "
            f"cross entropy"
        )

    # -- loss against targets -----------------------------------------------------------------

    def _family(self) -> str:
        if self.spec is not None:
            return self.spec.family
        try:
            return get_loss(self.recommended).family
        except ValueError:  # "ce" before the softmax family is registered
            return "softmax" if self.recommended == "ce" else "binary"

    def _loss_checks(self) -> None:
        add = self.report.add
        if self.spec is None:
            if self.target_format == "one-hot":
                self._one_hot_info()
            return
        name = self.spec.name
        family = self.spec.family
        if family == "binary":
            if self.layout == "index":
                add(
                    "D021",
                    f"{name} is a sigmoid (per-element) loss, but the target "
                    f"{_shape(self.tgt.shape)} holds class indices for the "
                    f"{_shape(self.out.shape)} output ({self.num_classes} classes).",
                    "Use a softmax loss (ce, softmax_focal, poly1) for one class per sample; "
                    "for independent labels one-hot the target: "
                    "`F.one_hot(target, C).float()`.",
                    loss=name,
                )
            elif self.target_format in ("one-hot", "probabilities"):
                what = "exactly one positive" if self.target_format == "one-hot" else "sum 1"
                add(
                    "D023",
                    f"every target row has {what} over {self.num_classes} classes "
                    f"(mutually exclusive classes), but {name} scores each class "
                    f"independently with a sigmoid.",
                    "Use ce (softmax cross entropy) with `target.argmax(1)`; keep a sigmoid "
                    "loss only if several labels can be true at once.",
                    loss=name,
                )
        else:
            if self.target_format == "multi-hot":
                rows = self._rows()[self._rows_keep()]
                per_row = rows.sum(1)
                off = int((per_row != 1).sum())
                add(
                    "D020",
                    f"{off} of {rows.shape[0]} target rows have {int(per_row.min())} to "
                    f"{int(per_row.max())} positives (multi-hot), but {name} is a softmax loss: "
                    f"it assumes exactly one class per sample.",
                    "Use bce (or focal / asl) for independent labels; if the classes really "
                    "are exclusive, fix the labels.",
                    loss=name,
                    rows=off,
                )
            elif self.layout == "same" and (self.out.dim() < 2 or self.out.shape[1] < 2):
                add(
                    "D004",
                    f"{name} is a softmax loss over dimension 1, but the output "
                    f"{_shape(self.out.shape)} has one score per sample: a softmax over one "
                    f"class is always 1 and the loss always 0.",
                    "For binary data use bce with one logit per sample, or give the model 2 "
                    "outputs and integer class targets for ce.",
                    loss=name,
                )
            elif self.target_format == "one-hot":
                self._one_hot_info()

    def _one_hot_info(self) -> None:
        self.report.add(
            "D022",
            f"targets are one-hot over {self.num_classes} classes; class indices carry the "
            f"same information in 1/{self.num_classes} of the memory.",
            "Use `target.argmax(1)` (int64) with ce: indices also enable ignore_index, and "
            "torch divides a class-weighted mean by the summed weights only for index targets.",
            num_classes=self.num_classes,
        )

    # -- probabilities vs logits ----------------------------------------------------------------

    def _probability_checks(self) -> None:
        add = self.report.add
        finite = self.out[self.out_ok]
        if finite.numel() == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
        in01 = lo >= 0.0 and hi <= 1.0
        rows_sum_1 = False
        if in01 and self.out.dim() >= 2 and self.out.shape[1] >= 2:
            sums = self.out.sum(1)
            ok = torch.isfinite(sums)
            rows_sum_1 = bool(ok.any()) and bool(((sums[ok] - 1).abs() <= ROW_SUM_TOL).all())
        family = self._family()
        name = self.spec.name if self.spec is not None else self.recommended
        if self.probs:
            if family == "binary" and not in01:
                add(
                    "D012",
                    f"outputs range over [{lo:.4g}, {hi:.4g}], but the probability form of "
                    f"{name} needs probabilities in [0, 1]: these look like logits.",
                    f"Feed them to the logits form (`{name}` without --probs): it applies the "
                    f"sigmoid itself, in log space.",
                    min=lo,
                    max=hi,
                )
            return
        if family == "softmax" and rows_sum_1:
            add(
                "D010",
                f"every output lies in [{lo:.4g}, {hi:.4g}] and every row sums to 1 (within "
                f"{ROW_SUM_TOL:g}): these are softmax probabilities, and {name} applies "
                f"log_softmax again -- the double softmax squashes the gradient.",
                "Feed the raw logits (the last layer's output before softmax) to the loss; "
                "apply softmax only for predictions.",
                min=lo,
                max=hi,
            )
        elif family == "binary" and in01:
            extra = " and every row sums to 1 (a softmax output)" if rows_sum_1 else ""
            add(
                "D011",
                f"every output lies in [{lo:.4g}, {hi:.4g}]{extra}: these look like "
                f"probabilities, and {name} applies a sigmoid to them again (a double sigmoid "
                f"keeps every p between 0.5 and 0.73).",
                f"Feed the raw logits to {name}; if the model must output probabilities, use "
                f"the probability form (--probs) -- logits are more exact.",
                min=lo,
                max=hi,
                rows_sum_to_one=rows_sum_1,
            )

    # -- saturation -----------------------------------------------------------------------------

    def _saturation(self) -> None:
        if not self.out.is_floating_point():
            return
        family = self._family()
        ok = self.out_ok
        if self.probs:
            if family != "binary":
                return
            p = self.out
            sat = ok & ((p <= PROB_SATURATION) | (p >= 1 - PROB_SATURATION))
            n = int(sat.sum())
            if n and n / max(int(ok.sum()), 1) >= SATURATED_SHARE:
                self.report.add(
                    "D030",
                    f"{n} of {int(ok.sum())} probabilities lie within {PROB_SATURATION:g} of 0 "
                    f"or 1: the sigmoid before this loss passes back a gradient p(1 - p) below "
                    f"{PROB_SATURATION:g} there, and learning stalls.",
                    "Pass logits to the logits form of the loss (its gradient p - y never "
                    "vanishes on a wrong prediction).",
                    count=n,
                )
            return
        if family == "softmax" and self.out.dim() >= 2 and self.out.shape[1] >= 2:
            top2 = self.out.topk(2, dim=1).values
            margin = top2.select(1, 0) - top2.select(1, 1)
            row_ok = ok.all(1)
            sat = row_ok & (margin >= SATURATION)
            wrong = torch.zeros_like(sat)
            if self.layout == "index" and self.integral:
                pred = self.out.argmax(1)
                t = torch.where(self.keep, self.tgt, -1).to(torch.int64)
                wrong = sat & self.keep & (pred != t)
            what = "rows have a top logit"
            detail = f"{SATURATION:g} above the runner-up (softmax > 1 - 3e-7)"
            total = int(row_ok.sum())
        else:
            x = self.out
            sat = ok & (x.abs() >= SATURATION)
            wrong = torch.zeros_like(sat)
            if self.layout == "same":
                y = self.tgt
                hard = self.keep & ((y == 0) | (y == 1))
                wrong = sat & hard & (((x > 0) & (y == 0)) | ((x < 0) & (y == 1)))
            what = "logits have"
            detail = f"|x| >= {SATURATION:g} (sigmoid within 3e-7 of 0 or 1)"
            total = int(ok.sum())
        n, n_wrong = int(sat.sum()), int(wrong.sum())
        if total and (n / total >= SATURATED_SHARE or n_wrong):
            self.report.add(
                "D030",
                f"{n} of {total} {what} {detail}; {n_wrong} of them confidently wrong (loss "
                f"about |x| each, dominating the mean).",
                "Saturated logits usually mean exploding activations: lower the learning rate, "
                "normalise the inputs, clip gradients, or add label smoothing; check "
                "confidently wrong samples for label noise.",
                count=n,
                wrong=n_wrong,
                total=total,
            )

    # -- imbalance ------------------------------------------------------------------------------

    def _imbalance(self) -> None:
        from crossent import weights as W

        if any(f.code in ("D025", "D026", "D021") for f in self.report.findings):
            return  # counts of labels that are themselves wrong would mislead

        if self.target_format in ("multi-hot", "binary", "soft"):
            self._imbalance_labels(W)
        elif self.target_format in ("index", "one-hot", "probabilities") and self.num_classes:
            self._imbalance_classes(W)

    def _imbalance_labels(self, W: Any) -> None:
        if not self.in01:
            return
        rows = self._rows()
        keep = self.tgt_ok & ~self.ignored
        keep = keep.reshape(-1, 1) if keep.dim() == 1 else keep.movedim(1, -1).reshape(rows.shape)
        # Entries that are NaN or ignored are marked -1 and left out by pos_weight's ignore_index.
        marked = torch.where(keep, rows, -1.0)
        n = keep.sum(0).to(torch.float64)
        positives = torch.where(keep, rows, 0.0).sum(0)
        prevalence = positives / n.clamp_min(1)
        self.prevalence = [float(v) for v in prevalence]
        self.counts = [float(v) for v in positives]
        with warnings.catch_warnings():
            # pos_weight warns about labels without positives or negatives; D041 reports them.
            warnings.simplefilter("ignore", UserWarning)
            pw = W.pos_weight(marked, dim=0, ignore_index=-1)
            pw_all = W.pos_weight(marked.reshape(-1), dim=0, ignore_index=-1)
        labels = rows.shape[1]
        degenerate = (positives == 0) | (positives == n)
        if bool(degenerate.any()):
            idx = degenerate.nonzero().flatten().tolist()
            never = [i for i in idx if float(positives[i]) == 0]
            always = [i for i in idx if i not in never]
            if labels > 1:
                parts = []
                if never:
                    parts.append(f"{_labels_text(never)} never positive")
                if always:
                    parts.append(f"{_labels_text(always)} always positive")
                what = " and ".join(parts)
            else:
                what = "the positive class never occurs" if never else "every target is positive"
            self.report.add(
                "D041",
                f"{what} in {int(n.max())} samples: nothing to tell apart, so the model cannot "
                f"learn it from this data (pos_weight is undefined; crossent.pos_weight gives 1).",
                "Collect examples of both outcomes, or drop such labels from the output head.",
                labels=idx,
            )
        low = torch.minimum(prevalence, 1 - prevalence)
        ratio = torch.where(
            degenerate, 0.0, torch.maximum(prevalence, 1 - prevalence) / low.clamp_min(1e-300)
        )
        if not bool((ratio >= IMBALANCE_RATIO).any()):
            return
        worst = int(ratio.argmax())
        worst_ratio = float(ratio[worst])
        alpha = float(pw_all / (1 + pw_all))
        self.suggestions["pos_weight"] = f"bce:pos_weight={_list(pw.tolist(), 4)}"
        self.suggestions["focal"] = f"focal:gamma=2,alpha={alpha:.2f}"
        rare = int((ratio >= IMBALANCE_RATIO).sum())
        where = (
            f"{rare} of {labels} labels are imbalanced; label {worst} has"
            if labels > 1
            else "the data has"
        )
        share = float(prevalence[worst])
        self.report.add(
            "D040",
            f"{where} {share:.2%} positives (1:{worst_ratio:.0f}).",
            f"Weight the positives with {self.suggestions['pos_weight']} (negatives / "
            f"positives, crossent.pos_weight); or, when easy negatives swamp the loss, "
            f"{self.suggestions['focal']} (alpha = share of negatives; Lin et al. found 0.25 "
            f"best with gamma 2, so tune it).",
            label=worst,
            prevalence=share,
            ratio=worst_ratio,
            pos_weight=pw.tolist(),
            alpha=alpha,
        )

    def _imbalance_classes(self, W: Any) -> None:
        c = int(self.num_classes or 0)
        if self.layout == "index":
            t = self.tgt[self.keep]
            t = t[(t >= 0) & (t < c) & (t == t.round())].to(torch.int64)
            counts = W.class_counts(t, num_classes=c).to(torch.float64)
        else:
            rows = self._rows()[self._rows_keep()]
            counts = rows.sum(0)
        total = float(counts.sum())
        if total <= 0:
            return
        self.counts = [float(v) for v in counts]
        self.prevalence = [float(v) / total for v in counts]
        absent = counts == 0
        if bool(absent.any()):
            idx = absent.nonzero().flatten().tolist()
            self.report.add(
                "D041",
                f"{len(idx)} of {c} classes never occur{'s' if len(idx) == 1 else ''} in "
                f"{total:.0f} targets ({'class' if len(idx) == 1 else 'classes'} "
                f"{_few(idx)}): the model cannot learn "
                f"{'it' if len(idx) == 1 else 'them'} from this data.",
                "Collect examples of them, or drop them from the output layer; class weights "
                "give them the rarest class's weight (crossent.class_weights).",
                classes=idx,
            )
        present = counts[~absent]
        if present.numel() < 2:
            return
        ratio = float(present.max() / present.min())
        if ratio >= IMBALANCE_RATIO:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                effective = W.class_weights(counts, method="effective_num", beta=0.999)
                inverse = W.class_weights(counts, method="inverse_freq")
            self.suggestions["class_weights"] = f"ce:weight={_list(effective.tolist(), 4)}"
            self.suggestions["class_weights_inverse_freq"] = (
                f"ce:weight={_list(inverse.tolist(), 4)}"
            )
            self.suggestions["focal"] = (
                f"softmax_focal:gamma=2,alpha={_list(effective.tolist(), 4)}"
            )
            rare = int(counts.masked_fill(absent, math.inf).argmin())
            common = int(counts.argmax())
            self.report.add(
                "D040",
                f"classes imbalanced {ratio:.0f}:1 -- class {common} has {counts[common]:.0f} "
                f"targets ({self.prevalence[common]:.1%}), class {rare} has {counts[rare]:.0f} "
                f"({self.prevalence[rare]:.1%}).",
                f"Weight the classes: {self.suggestions['class_weights']} (effective number, "
                f"beta 0.999, crossent.class_weights) or inverse frequency "
                f"{self.suggestions['class_weights_inverse_freq']}; with many easy examples "
                f"{self.suggestions['focal']}.",
                ratio=ratio,
                counts=self.counts,
                class_weights=effective.tolist(),
            )
