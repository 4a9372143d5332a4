"""Every loss under torch.autocast: float32 inside, float32 out (as torch's losses), finite
loss and gradients for every finite logit, and the float32 result to the dtype tolerance.

CPU runs bfloat16 and float16; the CUDA variants run where a GPU is present.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import crossent
from tests._helpers import assert_close
from tests._helpers.cases import (
    BACKENDS,
    backend_option,
    loss_forms,
    make_options,
    make_target,
    with_backends,
)

FORMS = loss_forms()
FORM_IDS = [f.id for f in FORMS]
LOGIT_FORMS = [f for f in FORMS if not f.probs]

_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICE_DTYPES = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cpu", torch.float16, id="cpu-float16"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=_cuda),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=_cuda),
]
REDUCTIONS = ("none", "mean", "sum")


def _case(form, n, *, device, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, 3, generator=g) * scale
    target = make_target(form, n, generator=g, ignore_fraction=0.2)
    options = make_options(form, generator=g)
    options = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    # The loss's own input: logits, or the probabilities a model would output (in float32).
    return form.to_input(scores).to(device), target.to(device), options


def _value_and_grad(fn, x, target):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, target)
    out.float().sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form,backend", with_backends(FORMS))
def test_computes_in_float32_and_returns_float32(form, backend, reduction, device, dtype):
    """On the same half-precision input, the loss under autocast is the float32 loss."""
    x, target, options = _case(form, 16, device=device)
    fn = form.make(link=False, reduction=reduction, **options, **backend_option(backend))
    x_half = x.to(dtype)
    with torch.autocast(device, dtype=dtype):
        out, grad = _value_and_grad(fn, x_half, target)
    ref, ref_grad = _value_and_grad(fn, x_half.float(), target)
    assert out.dtype == torch.float32  # like torch's own losses under autocast
    assert grad.dtype == dtype  # the gradient of a half input is half
    assert_close(out, ref, dtype=torch.float32)
    assert_close(grad, ref_grad.to(dtype), dtype=dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form,backend", with_backends(FORMS))
def test_matches_the_float32_result_to_the_dtype_tolerance(form, backend, reduction, device, dtype):
    """Against float32 on the unrounded input: the error is the rounding of the input to the
    half format. Probabilities stay in [0.05, 0.95] (|logit| <= 3): a probability rounded to
    exactly 0 or 1 has lost what the loss needs, in any implementation."""
    scale = 1.0 if form.probs else 3.0
    x, target, options = _case(form, 16, device=device, scale=scale, seed=1)
    fn = form.make(link=False, reduction=reduction, **options, **backend_option(backend))
    with torch.autocast(device, dtype=dtype):
        out, grad = _value_and_grad(fn, x.to(dtype), target)
    ref, ref_grad = _value_and_grad(fn, x, target)
    assert_close(out, ref, dtype=dtype)
    assert_close(grad.float(), ref_grad, dtype=dtype, check_dtype=False)


def _extreme_logits(form, dtype, device, *, reduced: bool):
    """Rows mixing the most extreme finite logits of the dtype with ordinary ones.

    Elementwise ("none"), every finite logit up to the dtype's max: each loss is at most about
    |x| (times weights <= 1), representable. A sum of several losses near float32's max is
    not, whatever the implementation, so the reductions go up to 1e30 (float16's own max is
    65504). The softmax family's loss reaches max(x) - min(x): its logits stay within max / 4.
    """
    big = torch.finfo(dtype).max / (4 if form.spec.family == "softmax" else 1)
    if reduced:
        big = min(big, 1e30)
    values = torch.tensor([-big, -1e4, -100.0, -17.0, -1.0, 0.0, 1.0, 17.0, 100.0, 1e4, big])
    values = values.clamp(-big, big)
    g = torch.Generator().manual_seed(2)
    rows = [values[torch.randperm(len(values), generator=g)[:3]] for _ in range(24)]
    return torch.stack(rows).to(dtype).to(device)


def _bounded_options(form, g, device):
    """Weights in (0, 1]: a weight > 1 times a loss of 3e38 overflows any float format."""
    options = make_options(form, generator=g)
    for key in ("weight", "pos_weight"):
        options[key] = options[key] / options[key].max()
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in options.items()}


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("form,backend", with_backends(LOGIT_FORMS))
def test_finite_loss_and_gradient_for_every_finite_logit(form, backend, device, dtype):
    g = torch.Generator().manual_seed(4)
    target = make_target(form, 24, generator=g, ignore_fraction=0.1).to(device)
    options = _bounded_options(form, g, device)
    for reduction in REDUCTIONS:
        logits = _extreme_logits(form, dtype, device, reduced=reduction != "none")
        fn = form.make(reduction=reduction, **options, **backend_option(backend))
        with torch.autocast(device, dtype=dtype):
            out, grad = _value_and_grad(fn, logits, target)
        assert torch.isfinite(out).all(), (reduction, out)
        assert torch.isfinite(grad).all(), (reduction, grad)


PROB_FORMS = [f for f in FORMS if f.probs]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("form,backend", with_backends(PROB_FORMS))
def test_probability_forms_finite_loss_and_exact_gradient(form, backend, device, dtype):
    """Probabilities of every size the dtype holds (0, subnormals, 1): the loss is finite, and
    the gradient is the float32 gradient rounded to the dtype. d loss / d p is about 1 / p, so
    in float16 it exceeds the format below p ~ 1.5e-5 and rounds to inf -- the signal a
    GradScaler acts on; clamping it instead would hide real overflows from the scaler. In
    bfloat16 every gradient is finite. The logits forms have no such limit."""
    g = torch.Generator().manual_seed(5)
    target = make_target(form, 24, generator=g, ignore_fraction=0.1).to(device)
    options = _bounded_options(form, g, device)
    p = form.to_input(_extreme_logits(form, torch.float32, device, reduced=False)).to(dtype)
    for reduction in REDUCTIONS:
        fn = form.make(link=False, reduction=reduction, **options, **backend_option(backend))
        with torch.autocast(device, dtype=dtype):
            out, grad = _value_and_grad(fn, p, target)
        ref, ref_grad = _value_and_grad(fn, p.float(), target)
        assert torch.isfinite(out).all(), (reduction, out)
        assert_close(out, ref, dtype=torch.float32)
        representable = ref_grad.abs() <= torch.finfo(dtype).max
        assert torch.isfinite(grad[representable]).all(), reduction
        assert_close(grad, ref_grad.to(dtype), dtype=dtype)
        if dtype == torch.bfloat16:
            assert representable.all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("form,backend", with_backends(FORMS))
def test_training_step_under_autocast(form, backend, device, dtype):
    """A model whose matmuls run in half precision: finite float32 parameter gradients, close
    to the float32 step (the difference is the matmuls' rounding, measured below 2e-2)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(32, 6, generator=g).to(device)
    target = make_target(form, 32, generator=g, ignore_fraction=0.2).to(device)
    options = make_options(form, generator=g)
    options = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    fn = form.make(**options, **backend_option(backend))

    def step(autocast):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        model = model.to(device)
        with torch.autocast(device, dtype=dtype, enabled=autocast):
            loss = fn(model(x), target)
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    loss, grads = step(True)
    ref_loss, ref_grads = step(False)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    for grad, ref in zip(grads, ref_grads):
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
        assert float((grad - ref).norm() / ref.norm()) < 2e-2
    assert float(abs(loss - ref_loss) / ref_loss) < 2e-2


# --------------------------------------------------------------------------------------------
# The same promise without autocast: every option of the modulated losses, at the format's max
# --------------------------------------------------------------------------------------------

MODULATED = {
    "focal_gamma0.5": (crossent.sigmoid_focal_loss, dict(gamma=0.5)),
    "focal_gamma2": (crossent.sigmoid_focal_loss, dict(gamma=2.0)),
    "focal_gamma5_alpha_none": (crossent.sigmoid_focal_loss, dict(gamma=5.0, alpha=None)),
    "poly1_focal_gamma5": (crossent.poly1_focal_loss, dict(gamma=5.0, epsilon=2.0)),
    "asl_gamma_pos2_noclip": (
        crossent.asymmetric_loss,
        dict(gamma_pos=2.0, gamma_neg=4.0, clip=None),
    ),
    "asl_gamma_pos1_clip": (
        crossent.asymmetric_loss,
        dict(gamma_pos=1.0, gamma_neg=2.0, clip=0.05),
    ),
}


def _backend_kwargs(fn, backend):
    return backend_option(backend) if "backend" in inspect.signature(fn).parameters else {}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", MODULATED)
def test_modulated_losses_finite_gradient_up_to_the_format_max(case, dtype, backend):
    """d loss / d factor = base_loss * gamma overflows for |x| > max / gamma: computed in that
    order, the gradient is inf * 0 = NaN where the factor has saturated. It must stay finite
    and exact, on every backend."""
    fn, options = MODULATED[case]
    options = {**options, **_backend_kwargs(fn, backend)}
    big = torch.finfo(dtype).max
    x = torch.tensor(
        [-big, -big / 3, -1e30, -2e3, -50.0, 0.0, 50.0, 2e3, 1e30, big / 3, big], dtype=dtype
    )
    for y_value in (0.0, 1.0, 0.3):
        xg = x.clone().requires_grad_(True)
        y = torch.full_like(x, y_value)
        out = fn(xg, y, reduction="none", **options)
        out.sum().backward()
        assert torch.isfinite(out).all(), (y_value, out)
        assert torch.isfinite(xg.grad).all(), (y_value, xg.grad)
        # Saturated: the gradient is the base loss's (d/dx of |x| is 1, times the weights);
        # Poly-1 adds epsilon (gamma + 1) (1 - p_t)^gamma d(1 - p_t)/dx, at most 12 here.
        assert (xg.grad.abs() <= 13.0).all(), (y_value, xg.grad)


SOFTMAX_MODULATED = {
    "softmax_focal_gamma0.5": dict(gamma=0.5),
    "softmax_focal_gamma5": dict(gamma=5.0),
    "softmax_focal_gamma5_smoothing": dict(gamma=5.0, label_smoothing=0.1),
    "softmax_focal_gamma2_alpha": dict(gamma=2.0, alpha=0.25),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", SOFTMAX_MODULATED)
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
def test_softmax_focal_finite_gradient_up_to_the_format_max(case, targets, dtype, backend):
    """The softmax focal loss reaches max(x) - min(x): logits within +-max/4 keep it finite;
    -log p_t * gamma beyond the format's max must not turn the gradient into NaN."""
    big = torch.finfo(dtype).max / 4
    x = torch.tensor(
        [[big, -big, 0.0], [-big, big, 1.0], [1e30, -1e30, 0.0], [2e3, -2e3, 0.0], [1.0, 2.0, 3.0]],
        dtype=dtype,
        requires_grad=True,
    )
    if targets == "indices":
        target = torch.tensor([1, 0, 1, 1, 2])
    else:
        target = torch.softmax(torch.randn(5, 3, dtype=dtype), dim=1)
    options = {**SOFTMAX_MODULATED[case], **_backend_kwargs(crossent.softmax_focal_loss, backend)}
    out = crossent.softmax_focal_loss(x, target, reduction="none", **options)
    out.sum().backward()
    assert torch.isfinite(out).all(), out
    assert torch.isfinite(x.grad).all(), x.grad
    assert (x.grad.abs() <= 1.0 + 1e-6).all(), x.grad
