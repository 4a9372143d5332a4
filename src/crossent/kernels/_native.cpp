// crossent's native CPU operators: the small-input formulations of crossent.losses._small
// as single vectorised loops with a C++ autograd node, where a chain of torch operations
// costs more in per-operation overhead than in arithmetic (a batch of 32 rows).
//
// Built by crossent/kernels/_native.py (with this machine's vector instructions) and
// loaded into the process with torch.ops.load_library; never imported as a Python module.
// Every operator computes the same formula as its torch formulation in _small.py, which
// remains the reference the tests compare with.

#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>

namespace {

using at::vec::Vectorized;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// at::Reduction's values, as torch's loss operators take them
constexpr int64_t kNone = 0;
constexpr int64_t kMean = 1;

// How an optional per-element factor (weight, pos_weight) broadcasts over the input, seen as
// rows x cols with cols its last dimension: absent, one number, one value per column (a
// per-class vector), or one per element.
enum class Layout { kAbsent, kScalar, kColumns, kFull };

Layout layout_of(const std::optional<at::Tensor>& w, const at::Tensor& input, const char* name) {
  if (!w.has_value() || !w->defined()) {
    return Layout::kAbsent;
  }
  if (w->sizes().equals(input.sizes())) {
    return Layout::kFull;
  }
  if (w->numel() == 1 && w->dim() <= std::max<int64_t>(input.dim(), 1)) {
    return Layout::kScalar;
  }
  bool columns = input.dim() >= 1 && w->dim() >= 1 && w->dim() <= input.dim() &&
                 w->size(-1) == input.size(-1);
  for (int64_t d = 0; columns && d + 1 < w->dim(); ++d) {
    columns = w->size(d) == 1;
  }
  TORCH_CHECK(columns, "crossent_native: ", name, " of size ", w->sizes(),
              " is neither one value, one per class, nor the input's size ", input.sizes());
  return Layout::kColumns;
}

// Accumulates a row's losses in vector registers, and every kFlush vectors into a double:
// float32 partial sums of at most kFlush * lanes terms.
constexpr int64_t kFlush = 64;

template <typename T>
double sum_lanes(const Vectorized<T>& v) {
  T lanes[Vectorized<T>::size()];
  v.store(lanes);
  double s = 0;
  for (int64_t i = 0; i < Vectorized<T>::size(); ++i) {
    s += lanes[i];
  }
  return s;
}

// BCE with logits, elementwise, of one hard-target flip (see _small._bce_flipped):
//   r = clamp(round(y), 0, 1), d = y - r, v = (1 - 2r) x,
//   loss = c softplus(v) - m d x,   c = 1 + (p - 1) y,   m = p + (1 - p) r   (p: pos_weight)
//   d loss / d x = c (1 - 2r) sigmoid(v) - m d
// times the weight; ignored elements (target == ignore_index) contribute 0 to both.
// Returns the sum of the losses (when `loss` is null), writes the elementwise losses
// otherwise, and the gradient times `scale` when `grad` is not null.
template <typename T>
double bce_with_logits_loop(const T* x, const T* y, const T* w, Layout w_layout, const T* p,
                            Layout p_layout, bool ignoring, T ignore, T smoothing, T* loss,
                            T* grad, T scale, int64_t rows, int64_t cols) {
  using Vec = Vectorized<T>;
  const Vec zero(T(0)), one(T(1)), two(T(2)), half(T(0.5));
  const Vec keep(T(1) - smoothing), spread(T(0.5) * smoothing), scale_v(scale);
  const bool smoothed = smoothing != T(0);
  double total = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t base = i * cols;
    Vec acc(T(0));
    int64_t pending = 0;
    for (int64_t j = 0; j < cols; j += Vec::size()) {
      const int64_t k = std::min<int64_t>(Vec::size(), cols - j);
      const int64_t at = base + j;
      const Vec xv = Vec::loadu(x + at, k);
      const Vec target = Vec::loadu(y + at, k);
      Vec yv = smoothed ? at::vec::fmadd(target, keep, spread) : target;
      const Vec r = at::vec::clamp(yv.round(), zero, one);
      const Vec d = yv - r;
      const Vec sign = at::vec::fnmadd(two, r, one);  // 1 - 2r
      const Vec v = sign * xv;
      const Vec e = v.abs().neg().exp();  // exp(-|v|), in (0, 1]
      Vec l = at::vec::maximum(v, zero) + e.log1p();
      Vec c = one, m = one;
      if (p_layout != Layout::kAbsent) {
        const Vec pv = p_layout == Layout::kScalar ? Vec(p[0])
                       : p_layout == Layout::kColumns ? Vec::loadu(p + j, k)
                                                      : Vec::loadu(p + at, k);
        c = at::vec::fmadd(pv - one, yv, one);
        m = at::vec::fmadd(one - pv, r, pv);
        l = l * c;
      }
      const Vec md = m * d;
      l = at::vec::fnmadd(md, xv, l);  // l - m d x
      Vec wv = one;
      if (w_layout != Layout::kAbsent) {
        wv = w_layout == Layout::kScalar ? Vec(w[0])
             : w_layout == Layout::kColumns ? Vec::loadu(w + j, k)
                                            : Vec::loadu(w + at, k);
        l = l * wv;
      }
      Vec valid;
      if (ignoring) {
        valid = target != Vec(ignore);  // all-ones lanes where the element counts
        l = Vec::blendv(zero, l, valid);
      }
      if (loss != nullptr) {
        l.store(loss + at, k);
      } else {
        if (k < Vec::size()) {
          l = Vec::set(zero, l, k);
        }
        acc = acc + l;
        if (++pending == kFlush) {
          total += sum_lanes(acc);
          acc = zero;
          pending = 0;
        }
      }
      if (grad != nullptr) {
        const Vec s = Vec::blendv(e, one, v >= zero) / (one + e);  // sigmoid(v)
        Vec g = at::vec::fmsub(c * sign, s, md) * wv * scale_v;
        if (ignoring) {
          g = Vec::blendv(zero, g, valid);
        }
        g.store(grad + at, k);
      }
    }
    if (pending != 0) {
      total += sum_lanes(acc);
    }
  }
  return total;
}

// The number of targets that are not ignore_index.
template <typename T>
int64_t count_valid(const T* y, int64_t n, T ignore) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    count += y[i] != ignore;
  }
  return count;
}

at::Tensor optional_contiguous(const std::optional<at::Tensor>& w, Layout layout) {
  return layout == Layout::kAbsent ? at::Tensor() : w->contiguous();
}

// (out, d out / d input): the loss, reduced or elementwise, and its gradient if need_grad.
std::tuple<at::Tensor, at::Tensor> bce_with_logits_forward(
    const at::Tensor& input_, const at::Tensor& target_, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& pos_weight, std::optional<double> ignore_index,
    double label_smoothing, int64_t reduction, bool need_grad) {
  TORCH_CHECK(input_.device().is_cpu() && target_.device().is_cpu(),
              "crossent_native: CPU tensors only");
  TORCH_CHECK(input_.scalar_type() == target_.scalar_type() &&
                  input_.sizes().equals(target_.sizes()),
              "crossent_native: the target must have the input's dtype and size");
  const Layout w_layout = layout_of(weight, input_, "weight");
  const Layout p_layout = layout_of(pos_weight, input_, "pos_weight");
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor w = optional_contiguous(weight, w_layout);
  const at::Tensor p = optional_contiguous(pos_weight, p_layout);
  const int64_t n = input.numel();
  const bool columns = w_layout == Layout::kColumns || p_layout == Layout::kColumns;
  const int64_t cols = columns ? input.size(-1) : n;
  const int64_t rows = cols == 0 ? 0 : n / cols;
  at::Tensor out, grad;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "crossent_native::bce_with_logits", [&] {
    TORCH_CHECK(!w.defined() || w.scalar_type() == input.scalar_type(),
                "crossent_native: the weight must have the input's dtype");
    TORCH_CHECK(!p.defined() || p.scalar_type() == input.scalar_type(),
                "crossent_native: pos_weight must have the input's dtype");
    const scalar_t* y = target.const_data_ptr<scalar_t>();
    const bool ignoring = ignore_index.has_value();
    const scalar_t ignore = ignoring ? static_cast<scalar_t>(*ignore_index) : scalar_t(0);
    int64_t count = n;
    if (ignoring && reduction == kMean) {
      count = count_valid(y, n, ignore);
    }
    const scalar_t scale = reduction == kMean ? scalar_t(1) / static_cast<scalar_t>(count)
                                              : scalar_t(1);
    if (reduction == kNone) {
      out = at::empty_like(input);
    }
    if (need_grad) {
      grad = at::empty_like(input);
    }
    const double total = bce_with_logits_loop<scalar_t>(
        input.const_data_ptr<scalar_t>(), y, w.defined() ? w.const_data_ptr<scalar_t>() : nullptr,
        w_layout, p.defined() ? p.const_data_ptr<scalar_t>() : nullptr, p_layout, ignoring,
        ignore, static_cast<scalar_t>(label_smoothing),
        reduction == kNone ? out.mutable_data_ptr<scalar_t>() : nullptr,
        need_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr, scale, rows, cols);
    if (reduction != kNone) {
      // a mean over no element is 0 / 0: NaN, which the caller hands to the general path
      const double value = reduction == kMean ? total / static_cast<double>(count) : total;
      out = at::scalar_tensor(value, input.options());
    }
  });
  return {out, grad};
}

// The autograd node: forward computes the loss and its gradient in one pass and saves the
// gradient; backward multiplies it by the incoming gradient (first derivatives only).
class BceWithLogits : public torch::autograd::Function<BceWithLogits> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& pos_weight,
                            std::optional<double> ignore_index, double label_smoothing,
                            int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, grad] = bce_with_logits_forward(input, target, weight, pos_weight, ignore_index,
                                               label_smoothing, reduction, true);
    ctx->save_for_backward({grad});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "crossent's fused kernels compute first derivatives only, but backward was "
                "called with create_graph=True. For higher-order gradients compute the loss "
                "with backend=\"reference\".");
    const at::Tensor grad = ctx->get_saved_variables()[0];
    return {grad * grad_outputs[0], at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(),           at::Tensor(), at::Tensor()};
  }
};

at::Tensor bce_with_logits_cpu(const at::Tensor& input, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& pos_weight,
                               std::optional<double> ignore_index, double label_smoothing,
                               int64_t reduction) {
  return std::get<0>(bce_with_logits_forward(input, target, weight, pos_weight, ignore_index,
                                             label_smoothing, reduction, false));
}

at::Tensor bce_with_logits_autograd(const at::Tensor& input, const at::Tensor& target,
                                    const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& pos_weight,
                                    std::optional<double> ignore_index, double label_smoothing,
                                    int64_t reduction) {
  if (input.requires_grad() && at::GradMode::is_enabled()) {
    return BceWithLogits::apply(input, target, weight, pos_weight, ignore_index, label_smoothing,
                                reduction);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return bce_with_logits_cpu(input, target, weight, pos_weight, ignore_index, label_smoothing,
                             reduction);
}

}  // namespace

TORCH_LIBRARY(crossent_native, m) {
  m.def(
      "bce_with_logits(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "float? ignore_index, float label_smoothing, int reduction) -> Tensor");
}

TORCH_LIBRARY_IMPL(crossent_native, CPU, m) {
  m.impl("bce_with_logits", bce_with_logits_cpu);
}

TORCH_LIBRARY_IMPL(crossent_native, Autograd, m) {
  m.impl("bce_with_logits", bce_with_logits_autograd);
}
