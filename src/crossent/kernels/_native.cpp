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
#include <functional>
#include <limits>
#include <cmath>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

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

// A reduced loss, in the input's dtype. One that is not finite there -- a mean over no element
// (0 / 0), an overflow, a NaN -- raises NotImplementedError, and the caller hands the call to
// the general path, whose answers those are (0 for a mean over nothing): the check costs no
// read of the result on the caller's side.
at::Tensor reduced(double total, double denominator, int64_t reduction, const at::Tensor& input) {
  const double value = reduction == kMean ? total / denominator : total;
  const double stored =
      input.scalar_type() == at::kFloat ? static_cast<double>(static_cast<float>(value)) : value;
  TORCH_CHECK_NOT_IMPLEMENTED(std::isfinite(stored),
                              "crossent_native: a reduced loss that is not finite");
  return at::scalar_tensor(value, input.options());
}

at::Tensor optional_contiguous(const std::optional<at::Tensor>& w, Layout layout) {
  return layout == Layout::kAbsent ? at::Tensor() : w->contiguous();
}

// ---- the elementwise (binary) losses ----------------------------------------------------------
//
// One loop for both: the input seen as rows x cols (cols its last dimension where a factor has
// one value per class, else one row of every element), a vector of elements at a time. A loss's
// element function gives the unweighted loss and its derivative for a vector of elements; the
// loop multiplies both by the weight, zeroes the ignored elements (target == ignore_index),
// writes the elementwise losses or sums them (in vector registers, flushed into a double every
// kFlush vectors: float32 partial sums of at most kFlush * lanes terms), and writes the
// gradient times `scale` (the mean's 1 / count).

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

// A factor (weight, pos_weight) at elements [at, at + k) of row position j.
template <typename T>
Vectorized<T> load_factor(const T* f, Layout layout, int64_t j, int64_t at, int64_t k) {
  switch (layout) {
    case Layout::kScalar:
      return Vectorized<T>(f[0]);
    case Layout::kColumns:
      return Vectorized<T>::loadu(f + j, k);
    case Layout::kFull:
      return Vectorized<T>::loadu(f + at, k);
    default:
      return Vectorized<T>(T(1));
  }
}

template <typename T>
struct Elementwise {
  const T* x;
  const T* y;
  const T* w;  // the weight, or null
  Layout w_layout;
  bool ignoring;
  T ignore;
  T* loss;  // the elementwise losses ("none"), else null: summed
  T* grad;  // null: no gradient
  T scale;
  int64_t rows, cols;
};

// element(x, target, valid, j, at, k) -> (loss, d loss / dx), unweighted; `valid`: all bits
// set in the lanes that count.
template <typename T, typename Element>
double elementwise_loop(const Elementwise<T>& e, const Element& element) {
  using Vec = Vectorized<T>;
  const Vec zero(T(0)), scale(e.scale), all = (zero == zero);
  double total = 0;
  for (int64_t i = 0; i < e.rows; ++i) {
    const int64_t base = i * e.cols;
    Vec acc = zero;
    int64_t pending = 0;
    for (int64_t j = 0; j < e.cols; j += Vec::size()) {
      const int64_t k = std::min<int64_t>(Vec::size(), e.cols - j);
      const int64_t at = base + j;
      const Vec target = Vec::loadu(e.y + at, k);
      const Vec valid = e.ignoring ? target != Vec(e.ignore) : all;
      auto [l, g] = element(Vec::loadu(e.x + at, k), target, valid, j, at, k);
      if (e.w != nullptr) {
        const Vec wv = load_factor(e.w, e.w_layout, j, at, k);
        l = l * wv;
        g = g * wv;
      }
      if (e.ignoring) {
        l = Vec::blendv(zero, l, valid);
        g = Vec::blendv(zero, g, valid);
      }
      if (e.loss != nullptr) {
        l.store(e.loss + at, k);
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
      if (e.grad != nullptr) {
        (g * scale).store(e.grad + at, k);
      }
    }
    if (pending != 0) {
      total += sum_lanes(acc);
    }
  }
  return total;
}

// (out, d out / d input) of an elementwise loss: the checks, the outputs, the mean's count
// (of the targets that are not ignore_index), and `loop(Elementwise<T>&)` for the sum.
template <typename Loop>
std::tuple<at::Tensor, at::Tensor> elementwise_forward(
    const at::Tensor& input_, const at::Tensor& target_, const std::optional<at::Tensor>& weight,
    Layout other_layout, std::optional<double> ignore_index, int64_t reduction, bool need_grad,
    const Loop& loop) {
  TORCH_CHECK(input_.device().is_cpu() && target_.device().is_cpu(),
              "crossent_native: CPU tensors only");
  TORCH_CHECK(input_.scalar_type() == target_.scalar_type() &&
                  input_.sizes().equals(target_.sizes()),
              "crossent_native: the target must have the input's dtype and size");
  const Layout w_layout = layout_of(weight, input_, "weight");
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor w = optional_contiguous(weight, w_layout);
  const int64_t n = input.numel();
  const bool columns = w_layout == Layout::kColumns || other_layout == Layout::kColumns;
  const int64_t cols = columns ? input.size(-1) : n;
  at::Tensor out, grad;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "crossent_native::elementwise", [&] {
    using T = scalar_t;
    TORCH_CHECK(!w.defined() || w.scalar_type() == input.scalar_type(),
                "crossent_native: the weight must have the input's dtype");
    const T* y = target.const_data_ptr<T>();
    const bool ignoring = ignore_index.has_value();
    const T ignore = ignoring ? static_cast<T>(*ignore_index) : T(0);
    int64_t count = n;
    if (ignoring && reduction == kMean) {
      count = std::count_if(y, y + n, [&](T v) { return v != ignore; });
    }
    if (reduction == kNone) {
      out = at::empty_like(input);
    }
    if (need_grad) {
      grad = at::empty_like(input);
    }
    Elementwise<T> e{input.const_data_ptr<T>(),
                     y,
                     w.defined() ? w.const_data_ptr<T>() : nullptr,
                     w_layout,
                     ignoring,
                     ignore,
                     reduction == kNone ? out.mutable_data_ptr<T>() : nullptr,
                     need_grad ? grad.mutable_data_ptr<T>() : nullptr,
                     reduction == kMean ? T(1) / static_cast<T>(count) : T(1),
                     cols == 0 ? 0 : n / cols,
                     cols};
    const double total = loop(e);
    if (reduction != kNone) {
      out = reduced(total, static_cast<double>(count), reduction, input);
    }
  });
  return {out, grad};
}

// BCE with logits, of one hard-target flip (see _small._bce_flipped), targets smoothed first
// (y (1 - s) + s / 2):
//   r = clamp(round(y), 0, 1), d = y - r, v = (1 - 2r) x,
//   loss = c softplus(v) - m d x,   c = 1 + (p - 1) y,   m = p + (1 - p) r   (p: pos_weight)
//   d loss / d x = c (1 - 2r) sigmoid(v) - m d
std::tuple<at::Tensor, at::Tensor> bce_with_logits_forward(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& pos_weight, std::optional<double> ignore_index,
    double label_smoothing, int64_t reduction, bool need_grad) {
  const Layout p_layout = layout_of(pos_weight, input, "pos_weight");
  const at::Tensor p = optional_contiguous(pos_weight, p_layout);
  TORCH_CHECK(!p.defined() || p.scalar_type() == input.scalar_type(),
              "crossent_native: pos_weight must have the input's dtype");
  auto loop = [&]<typename T>(const Elementwise<T>& e) {
    using Vec = Vectorized<T>;
    const Vec zero(T(0)), one(T(1)), two(T(2));
    const T smoothing = static_cast<T>(label_smoothing);
    const Vec keep(T(1) - smoothing), spread(T(0.5) * smoothing);
    const T* pp = p.defined() ? p.const_data_ptr<T>() : nullptr;
    const bool need_grad = e.grad != nullptr;
    return elementwise_loop(e, [&](const Vec& x, const Vec& target, const Vec&, int64_t j,
                                   int64_t at, int64_t k) {
      const Vec y = smoothing != T(0) ? at::vec::fmadd(target, keep, spread) : target;
      const Vec r = at::vec::clamp(y.round(), zero, one);
      const Vec d = y - r;
      const Vec sign = at::vec::fnmadd(two, r, one);  // 1 - 2r
      const Vec v = sign * x;
      const Vec ev = v.abs().neg().exp();  // exp(-|v|), in (0, 1]
      Vec l = at::vec::maximum(v, zero) + ev.log1p();
      Vec c = one, m = one;
      if (pp != nullptr) {
        const Vec pv = load_factor(pp, p_layout, j, at, k);
        c = at::vec::fmadd(pv - one, y, one);
        m = at::vec::fmadd(one - pv, r, pv);
        l = l * c;
      }
      const Vec md = m * d;
      l = at::vec::fnmadd(md, x, l);  // l - m d x
      Vec g = zero;
      if (need_grad) {
        const Vec s = Vec::blendv(ev, one, v >= zero) / (one + ev);  // sigmoid(v)
        g = at::vec::fmsub(c * sign, s, md);
      }
      return std::make_pair(l, g);
    });
  };
  return elementwise_forward(input, target, weight, p_layout, ignore_index, reduction, need_grad,
                             loop);
}

// BCE from probabilities: torch's BCELoss formula, which crossent keeps, with the logs
// clamped at -100: lp = log p (-100 at p = 0), lq = log(1 - p) (likewise),
//   loss = -(y lp + (1 - y) lq)
//   d loss / d p = (p - y) / (p (1 - p)) where both logs are live (not clamped), else
//                  (1 - y) [lq live] / (1 - p) - y [lp live] / p
// (the fused closed form's gradient, which differs from ATen's within 1e-12 of 0 and 1); an
// ignored element counts as a target of 0. A probability or a counted target outside [0, 1],
// or NaN, is a ValueError the caller hands to the general path, which words it.
constexpr double kLogClamp = -100.0;

std::tuple<at::Tensor, at::Tensor> binary_cross_entropy_forward(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    std::optional<double> ignore_index, int64_t reduction, bool need_grad) {
  bool out_of_range = false;
  auto loop = [&]<typename T>(const Elementwise<T>& e) {
    using Vec = Vectorized<T>;
    const Vec zero(T(0)), one(T(1)), clamp(static_cast<T>(kLogClamp));
    const bool need_grad = e.grad != nullptr;
    Vec bad = zero;  // all bits set in a lane that held a value outside [0, 1]
    const double total = elementwise_loop(e, [&](const Vec& p, const Vec& target,
                                                 const Vec& valid, int64_t, int64_t, int64_t) {
      const Vec y = e.ignoring ? Vec::blendv(zero, target, valid) : target;
      bad = bad | ~((p >= zero) & (p <= one) & (y >= zero) & (y <= one));  // NaN: bad
      const Vec q = one - p;
      const Vec lp_raw = p.log();  // -inf at 0
      const Vec lq_raw = q.log();
      const Vec p_live = (p > zero) & (lp_raw >= clamp);
      const Vec q_live = (q > zero) & (lq_raw >= clamp);
      const Vec lp = Vec::blendv(clamp, lp_raw, p_live);
      const Vec lq = Vec::blendv(clamp, lq_raw, q_live);
      const Vec y1 = one - y;
      const Vec l = (y * lp + y1 * lq).neg();
      Vec g = zero;
      if (need_grad) {
        const Vec both = p_live & q_live;
        const Vec dlp = Vec::blendv(zero, one / Vec::blendv(one, p, p_live), p_live);
        const Vec dlq = Vec::blendv(zero, one / Vec::blendv(one, q, q_live), q_live);
        const Vec inner = (p - y) / Vec::blendv(one, p * q, both);
        g = Vec::blendv(y1 * dlq - y * dlp, inner, both);
      }
      return std::make_pair(l, g);
    });
    T lanes[Vec::size()];
    bad.store(lanes);
    out_of_range = std::any_of(lanes, lanes + Vec::size(), [](T v) { return v != T(0); });
    return total;
  };
  auto result = elementwise_forward(input, target, weight, Layout::kAbsent, ignore_index,
                                    reduction, need_grad, loop);
  TORCH_CHECK_VALUE(!out_of_range, "crossent_native: a probability or target outside [0, 1]");
  return result;
}

// ---- softmax cross entropy, (N, C) logits -----------------------------------------------------
//
// Per row, with z = x - max, S = sum_j exp(z_j), lse - x_j = log S - z_j (no cancellation when
// one class dominates), p_j = exp(z_j) / S, and class weights w (1 without):
//
// class indices t, smoothing s, eps = s / C, W = sum_j w_j:
//   loss = (1 - s) w_t (log S - z_t) + eps sum_j w_j (log S - z_j)
//   d loss / d x_k = p_k ((1 - s) w_t + eps W) - eps w_k - (1 - s) w_t [k = t]
//   "mean" divides by the sum of w_t over the rows not ignored (torch's denominator);
// class probabilities y, a_j = w_j ((1 - s) y_j + eps):
//   loss = sum_j a_j (log S - z_j),   d loss / d x_k = p_k sum_j a_j - a_k
//   a row whose every target equals ignore_index is ignored; "mean" divides by the number of
//   rows not ignored.
// A term whose coefficient is 0 contributes 0, also at a -inf logit. The gradient's p_k is
// exp(z_k) (coef sc / S), not exp(z_k - log S): the rounding of max + log S would be the
// relative error of every p_k.

template <typename T>
T reduce_sum(const Vectorized<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vectorized<T>& a, Vectorized<T>& b) { return a + b; }, v);
}

template <typename T>
T reduce_max(const Vectorized<T>& v) {
  return at::vec::vec_reduce_all<T>(
      [](Vectorized<T>& a, Vectorized<T>& b) { return at::vec::maximum(a, b); }, v);
}

template <typename T>
struct Row {
  T max;    // the row's largest logit
  T sum;    // S = sum_j exp(x_j - max)
  T log_s;  // log S
};

// The row's max, S and log S; with `e` not null, exp(x_j - max) written there (the
// gradient's buffer: the gradient pass then scales it instead of recomputing the exponentials).
template <typename T>
Row<T> row_terms(const T* x, int64_t cols, T* e) {
  using Vec = Vectorized<T>;
  const Vec lowest(-std::numeric_limits<T>::infinity()), zero(T(0));
  Vec m = lowest;
  for (int64_t j = 0; j < cols; j += Vec::size()) {
    const int64_t k = std::min<int64_t>(Vec::size(), cols - j);
    Vec v = Vec::loadu(x + j, k);
    if (k < Vec::size()) {
      v = Vec::set(lowest, v, k);
    }
    m = at::vec::maximum(m, v);
  }
  const T max = reduce_max(m);
  const Vec shift(max);
  Vec s = zero;
  for (int64_t j = 0; j < cols; j += Vec::size()) {
    const int64_t k = std::min<int64_t>(Vec::size(), cols - j);
    Vec ev = (Vec::loadu(x + j, k) - shift).exp();
    if (k < Vec::size()) {
      ev = Vec::set(zero, ev, k);
    }
    if (e != nullptr) {
      ev.store(e + j, k);
    }
    s = s + ev;
  }
  const T sum = reduce_sum(s);
  return {max, sum, std::log(sum)};
}

// sum_j c_j (log S - z_j) over the terms with c_j != 0 (c null: every c_j = 1)
template <typename T>
T weighted_nll_sum(const T* x, const T* c, const Row<T>& r, int64_t cols) {
  using Vec = Vectorized<T>;
  const Vec zero(T(0)), shift(r.max), log_s(r.log_s);
  Vec acc = zero;
  for (int64_t j = 0; j < cols; j += Vec::size()) {
    const int64_t k = std::min<int64_t>(Vec::size(), cols - j);
    Vec term = log_s - (Vec::loadu(x + j, k) - shift);
    if (c != nullptr) {
      const Vec cv = Vec::loadu(c + j, k);
      term = Vec::blendv(cv * term, zero, cv == zero);
    }
    if (k < Vec::size()) {
      term = Vec::set(zero, term, k);
    }
    acc = acc + term;
  }
  return reduce_sum(acc);
}

// In place over e_k = exp(z_k): grad_k = e_k (coef sc / S) - b sc c_k (c null: - b sc)
template <typename T>
void softmax_gradient(T* g, const T* c, T b, T coef, T sc, const Row<T>& r, int64_t cols) {
  using Vec = Vectorized<T>;
  const Vec a(coef * sc / r.sum), bs(b * sc);
  for (int64_t j = 0; j < cols; j += Vec::size()) {
    const int64_t k = std::min<int64_t>(Vec::size(), cols - j);
    const Vec bv = c == nullptr ? bs : Vec::loadu(c + j, k) * bs;
    at::vec::fmsub(Vec::loadu(g + j, k), a, bv).store(g + j, k);
  }
}

at::Tensor optional_class_weight(const std::optional<at::Tensor>& weight, const at::Tensor& input) {
  if (!weight.has_value() || !weight->defined()) {
    return at::Tensor();
  }
  TORCH_CHECK(weight->dim() == 1 && weight->size(0) == input.size(1) &&
                  weight->scalar_type() == input.scalar_type(),
              "crossent_native: the class weight must be of size (C,) and the input's dtype");
  return weight->contiguous();
}

// The outputs of a per-row loss: the per-row losses ("none") or nothing (a reduced loss is
// summed in the caller), and the gradient buffer when one is needed.
template <typename T>
struct RowOutputs {
  at::Tensor out, grad;
  T* o = nullptr;
  T* g = nullptr;

  RowOutputs(const at::Tensor& input, int64_t reduction, bool need_grad) {
    if (reduction == kNone) {
      out = at::empty({input.size(0)}, input.options());
      o = out.mutable_data_ptr<T>();
    }
    if (need_grad) {
      grad = at::empty_like(input);
      g = grad.mutable_data_ptr<T>();
    }
  }

  // finish(i, Row, the row's gradient or null) for every row of x not skipped (the
  // gradient row then holds exp(x_j - max)); a skipped row: a loss of 0 and a zero gradient
  template <typename Skip, typename Finish>
  void for_each_row(const T* x, int64_t rows, int64_t cols, const Skip& skip,
                    const Finish& finish) {
    for (int64_t i = 0; i < rows; ++i) {
      T* gr = g == nullptr ? nullptr : g + i * cols;
      if (skip(i)) {
        if (o != nullptr) {
          o[i] = T(0);
        }
        if (gr != nullptr) {
          std::fill(gr, gr + cols, T(0));
        }
        continue;
      }
      finish(i, row_terms(x + i * cols, cols, gr), gr);
    }
  }

  std::tuple<at::Tensor, at::Tensor> finish(double total, double denominator, int64_t reduction,
                                            const at::Tensor& input) {
    if (reduction != kNone) {
      out = reduced(total, denominator, reduction, input);
    }
    return {out, grad};
  }
};

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward(
    const at::Tensor& input_, const at::Tensor& target_, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, double label_smoothing, int64_t reduction, bool need_grad) {
  TORCH_CHECK(input_.device().is_cpu() && target_.device().is_cpu(),
              "crossent_native: CPU tensors only");
  TORCH_CHECK(input_.dim() == 2 && target_.dim() == 1 && target_.size(0) == input_.size(0) &&
                  target_.scalar_type() == at::kLong,
              "crossent_native: (N, C) logits and (N,) int64 class indices");
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor w = optional_class_weight(weight, input);
  const int64_t rows = input.size(0), cols = input.size(1);
  const int64_t* t = target.const_data_ptr<int64_t>();
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "crossent_native::cross_entropy", [&] {
    using T = scalar_t;
    const T* x = input.const_data_ptr<T>();
    const T* wp = w.defined() ? w.const_data_ptr<T>() : nullptr;
    // the indices are checked (and the mean's denominator summed) before anything is written
    double denominator = 0;
    for (int64_t i = 0; i < rows; ++i) {
      if (t[i] == ignore_index) {
        continue;
      }
      TORCH_CHECK_INDEX(t[i] >= 0 && t[i] < cols, "Target ", t[i], " is out of bounds.");
      denominator += wp == nullptr ? 1.0 : static_cast<double>(wp[t[i]]);
    }
    const T s = static_cast<T>(label_smoothing);
    const T eps = s / static_cast<T>(cols);
    T w_sum = static_cast<T>(cols);
    if (wp != nullptr && s != T(0)) {
      double acc = 0;
      for (int64_t j = 0; j < cols; ++j) {
        acc += wp[j];
      }
      w_sum = static_cast<T>(acc);
    }
    const T sc = reduction == kMean ? static_cast<T>(1.0 / denominator) : T(1);
    RowOutputs<T> outputs(input, reduction, need_grad);
    double total = 0;
    auto skip = [&](int64_t i) { return t[i] == ignore_index; };
    auto finish = [&](int64_t i, const Row<T>& r, T* gr) {
      const T* xr = x + i * cols;
      const T w_t = wp == nullptr ? T(1) : wp[t[i]];
      const T nll_coef = w_t * (T(1) - s);
      const T nll = r.log_s - (xr[t[i]] - r.max);
      T loss = nll_coef == T(0) ? T(0) : nll_coef * nll;
      if (s != T(0)) {
        loss += eps * weighted_nll_sum(xr, wp, r, cols);
      }
      if (outputs.o != nullptr) {
        outputs.o[i] = loss;
      } else {
        total += loss;
      }
      if (gr != nullptr) {
        softmax_gradient(gr, wp, eps, nll_coef + eps * w_sum, sc, r, cols);
        gr[t[i]] -= nll_coef * sc;
      }
    };
    outputs.for_each_row(x, rows, cols, skip, finish);
    result = outputs.finish(total, denominator, reduction, input);
  });
  return result;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_probs_forward(
    const at::Tensor& input_, const at::Tensor& target_, const std::optional<at::Tensor>& weight,
    std::optional<double> ignore_index, double label_smoothing, int64_t reduction,
    bool need_grad) {
  TORCH_CHECK(input_.device().is_cpu() && target_.device().is_cpu(),
              "crossent_native: CPU tensors only");
  TORCH_CHECK(input_.dim() == 2 && target_.sizes().equals(input_.sizes()) &&
                  target_.scalar_type() == input_.scalar_type(),
              "crossent_native: (N, C) logits and class probabilities of their size and dtype");
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor w = optional_class_weight(weight, input);
  const int64_t rows = input.size(0), cols = input.size(1);
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "crossent_native::cross_entropy_probs", [&] {
    using T = scalar_t;
    using Vec = Vectorized<T>;
    const T* x = input.const_data_ptr<T>();
    const T* y = target.const_data_ptr<T>();
    const T* wp = w.defined() ? w.const_data_ptr<T>() : nullptr;
    // the rows to ignore (every target equal to ignore_index), found before anything is
    // written: the mean divides by the number of the others
    std::vector<uint8_t> ignored(ignore_index.has_value() ? rows : 0, 0);
    int64_t valid = rows;
    if (ignore_index.has_value()) {
      const T ignore = static_cast<T>(*ignore_index);
      for (int64_t i = 0; i < rows; ++i) {
        const T* yr = y + i * cols;
        ignored[i] = std::all_of(yr, yr + cols, [&](T v) { return v == ignore; });
        valid -= ignored[i];
      }
    }
    const T s = static_cast<T>(label_smoothing);
    const Vec keep(T(1) - s), eps(s / static_cast<T>(cols)), zero(T(0));
    const T sc = reduction == kMean ? static_cast<T>(1.0 / static_cast<double>(valid)) : T(1);
    RowOutputs<T> outputs(input, reduction, need_grad);
    double total = 0;
    auto skip = [&](int64_t i) { return !ignored.empty() && ignored[i]; };
    auto finish = [&](int64_t i, const Row<T>& r, T* gr) {
      const T* xr = x + i * cols;
      const T* yr = y + i * cols;
      const Vec shift(r.max), log_s(r.log_s);
      // a_j = w_j ((1 - s) y_j + eps); the loss sum_j a_j (log S - z_j) and coef = sum_j a_j
      auto coefficients = [&](int64_t j, int64_t k) {
        Vec a = at::vec::fmadd(Vec::loadu(yr + j, k), keep, eps);
        if (wp != nullptr) {
          a = a * Vec::loadu(wp + j, k);
        }
        return k < Vec::size() ? Vec::set(zero, a, k) : a;
      };
      Vec loss = zero, coef = zero;
      for (int64_t j = 0; j < cols; j += Vec::size()) {
        const int64_t k = std::min<int64_t>(Vec::size(), cols - j);
        const Vec a = coefficients(j, k);
        const Vec nll = log_s - (Vec::loadu(xr + j, k) - shift);
        loss = loss + Vec::blendv(a * nll, zero, a == zero);
        coef = coef + a;
      }
      const T row_loss = reduce_sum(loss);
      if (outputs.o != nullptr) {
        outputs.o[i] = row_loss;
      } else {
        total += row_loss;
      }
      if (gr != nullptr) {
        const Vec scale(reduce_sum(coef) * sc / r.sum), scv(sc);
        for (int64_t j = 0; j < cols; j += Vec::size()) {
          const int64_t k = std::min<int64_t>(Vec::size(), cols - j);
          at::vec::fmsub(Vec::loadu(gr + j, k), scale, coefficients(j, k) * scv)
              .store(gr + j, k);
        }
      }
    };
    outputs.for_each_row(x, rows, cols, skip, finish);
    result = outputs.finish(total, static_cast<double>(valid), reduction, input);
  });
  return result;
}

// ---- the autograd node ------------------------------------------------------------------------

using Compute = std::function<std::tuple<at::Tensor, at::Tensor>(bool)>;

// One node for a loss computed with its gradient in one pass: forward saves the gradient,
// backward multiplies it by the incoming one (first derivatives only; a new tensor each time,
// so a retained graph backpropagates again).
class OnePassLoss : public torch::autograd::Function<OnePassLoss> {
 public:
  // `input`: the tensor the node differentiates (compute reads it itself)
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& /*input*/,
                            const Compute& compute) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, grad] = compute(true);
    ctx->save_for_backward({grad});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "crossent's fused kernels compute first derivatives only, but backward was "
                "called with create_graph=True. For higher-order gradients compute the loss "
                "with backend=\"reference\".");
    const at::Tensor grad = ctx->get_saved_variables()[0];
    at::Tensor incoming = grad_outputs[0];
    if (incoming.dim() != 0 && incoming.dim() < grad.dim()) {
      incoming = incoming.unsqueeze(-1);  // a loss per row of (N, C) logits
    }
    return {grad * incoming, at::Tensor()};
  }
};

// The autograd key's kernel builds the node where a gradient is needed; the CPU key's (no
// autograd: inference mode) computes the loss alone.
template <bool Autograd>
at::Tensor run(const at::Tensor& input, const Compute& compute) {
  if (Autograd && input.requires_grad() && at::GradMode::is_enabled()) {
    return OnePassLoss::apply(input, compute);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return std::get<0>(compute(false));
}

// ---- the operators ----------------------------------------------------------------------------

template <bool Autograd>
at::Tensor bce_with_logits(const at::Tensor& input, const at::Tensor& target,
                           const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& pos_weight,
                           std::optional<double> ignore_index, double label_smoothing,
                           int64_t reduction) {
  return run<Autograd>(input, [&](bool need_grad) {
    return bce_with_logits_forward(input, target, weight, pos_weight, ignore_index,
                                   label_smoothing, reduction, need_grad);
  });
}

template <bool Autograd>
at::Tensor binary_cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                const std::optional<at::Tensor>& weight,
                                std::optional<double> ignore_index, int64_t reduction) {
  return run<Autograd>(input, [&](bool need_grad) {
    return binary_cross_entropy_forward(input, target, weight, ignore_index, reduction,
                                        need_grad);
  });
}

template <bool Autograd>
at::Tensor cross_entropy(const at::Tensor& input, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight, int64_t ignore_index,
                         double label_smoothing, int64_t reduction) {
  return run<Autograd>(input, [&](bool need_grad) {
    return cross_entropy_forward(input, target, weight, ignore_index, label_smoothing,
                                 reduction, need_grad);
  });
}

template <bool Autograd>
at::Tensor cross_entropy_probs(const at::Tensor& input, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight,
                               std::optional<double> ignore_index, double label_smoothing,
                               int64_t reduction) {
  return run<Autograd>(input, [&](bool need_grad) {
    return cross_entropy_probs_forward(input, target, weight, ignore_index, label_smoothing,
                                       reduction, need_grad);
  });
}

}  // namespace

TORCH_LIBRARY(crossent_native, m) {
  m.def(
      "bce_with_logits(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "float? ignore_index, float label_smoothing, int reduction) -> Tensor");
  m.def(
      "binary_cross_entropy(Tensor input, Tensor target, Tensor? weight, float? ignore_index, "
      "int reduction) -> Tensor");
  m.def(
      "cross_entropy(Tensor input, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, int reduction) -> Tensor");
  m.def(
      "cross_entropy_probs(Tensor input, Tensor target, Tensor? weight, float? ignore_index, "
      "float label_smoothing, int reduction) -> Tensor");
}

TORCH_LIBRARY_IMPL(crossent_native, Autograd, m) {
  m.impl("bce_with_logits", bce_with_logits<true>);
  m.impl("binary_cross_entropy", binary_cross_entropy<true>);
  m.impl("cross_entropy", cross_entropy<true>);
  m.impl("cross_entropy_probs", cross_entropy_probs<true>);
}

TORCH_LIBRARY_IMPL(crossent_native, CPU, m) {
  m.impl("bce_with_logits", bce_with_logits<false>);
  m.impl("binary_cross_entropy", binary_cross_entropy<false>);
  m.impl("cross_entropy", cross_entropy<false>);
  m.impl("cross_entropy_probs", cross_entropy_probs<false>);
}
