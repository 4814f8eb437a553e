#include "patchwise/models/max_pool.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "patchwise/models/kernels.h"

namespace patchwise {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// Output planes handled per parallel task (each plane is independent).
constexpr int64_t kPlanesPerTask = 4;

/// The identity: plain pooling's transform of its input.
struct Identity {
  template <typename T>
  T operator()(T v) const {
    return v;
  }
};

/// One plane: values and (when `where` is not null) the window position 0..3 of each
/// maximum of f(input). Branch-free selects, so the compiler vectorizes the row loop.
template <typename T, typename F = Identity>
void pool_plane(const T* in, T* out, T* where, int64_t w, int64_t oh, int64_t ow, F f = {}) {
  for (int64_t i = 0; i < oh; ++i) {
    const T* top = in + (2 * i) * w;
    const T* bottom = top + w;
    T* o = out + i * ow;
    T* k = where ? where + i * ow : nullptr;  // positions kept in T: the loop stays one width
    // As ATen's kernel: in row-major order a larger value or a NaN takes over (so the
    // last NaN of a window wins). Written without branches or arrays so it vectorizes.
    if (k) {
      for (int64_t j = 0; j < ow; ++j) {
        const T a = f(top[2 * j]), b = f(top[2 * j + 1]), c = f(bottom[2 * j]),
                d = f(bottom[2 * j + 1]);
        const bool tb = b > a || b != b;
        const T m1 = tb ? b : a;
        const bool tc = c > m1 || c != c;
        const T m2 = tc ? c : m1;
        const bool td = d > m2 || d != d;
        o[j] = td ? d : m2;
        const T k1 = tb ? T(1) : T(0);
        const T k2 = tc ? T(2) : k1;
        k[j] = td ? T(3) : k2;
      }
    } else {
      for (int64_t j = 0; j < ow; ++j) {
        const T a = f(top[2 * j]), b = f(top[2 * j + 1]), c = f(bottom[2 * j]),
                d = f(bottom[2 * j + 1]);
        const T m1 = (b > a || b != b) ? b : a;
        const T m2 = (c > m1 || c != c) ? c : m1;
        o[j] = (d > m2 || d != d) ? d : m2;
      }
    }
  }
}

/// One plane of the gradient, into a zeroed `out`: each output's gradient goes to
/// the position of its maximum.
template <typename T>
void unpool_plane(const T* grad, const T* where, T* out, int64_t w, int64_t oh, int64_t ow) {
  for (int64_t i = 0; i < oh; ++i) {
    T* top = out + (2 * i) * w;
    const T* g = grad + i * ow;
    const T* k = where + i * ow;
    for (int64_t j = 0; j < ow; ++j) {
      const auto at = static_cast<int64_t>(k[j]);
      top[2 * j + (at >> 1) * w + (at & 1)] = g[j];
    }
  }
}

class MaxPool2x2 : public torch::autograd::Function<MaxPool2x2> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input) {
    const at::Tensor x = input.contiguous();
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    const int64_t oh = h / 2, ow = w / 2;
    at::Tensor out = torch::empty({n, c, oh, ow}, x.options());
    const bool keep = input.requires_grad();
    at::Tensor where = keep ? torch::empty({n, c, oh, ow}, x.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool_2x2", [&] {
      const scalar_t* in = x.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      scalar_t* k = keep ? where.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, n * c, kPlanesPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          pool_plane(in + p * h * w, o + p * oh * ow, k ? k + p * oh * ow : nullptr, w, oh, ow);
        }
      });
    });
    if (keep) {
      ctx->save_for_backward({where});
      ctx->saved_data["h"] = h;
      ctx->saved_data["w"] = w;
    }
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor where = ctx->get_saved_variables()[0];
    const at::Tensor grad = grads[0].contiguous();
    const int64_t h = ctx->saved_data["h"].toInt(), w = ctx->saved_data["w"].toInt();
    const int64_t n = grad.size(0), c = grad.size(1), oh = grad.size(2), ow = grad.size(3);
    at::Tensor out = torch::zeros({n, c, h, w}, grad.options());
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "max_pool_2x2_backward", [&] {
      const scalar_t* g = grad.data_ptr<scalar_t>();
      const scalar_t* k = where.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      at::parallel_for(0, n * c, kPlanesPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          unpool_plane(g + p * oh * ow, k + p * oh * ow, o + p * h * w, w, oh, ow);
        }
      });
    });
    return {out};
  }
};

/// Sum over a plane of (x - center) (Square false) or of its square, in 8 lanes of T
/// so that the loop vectorizes; the lanes are added up in double.
template <bool Square, typename T>
double plane_sum(const T* x, int64_t size, T center) {
  T lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= size; i += 8) {
    for (int k = 0; k < 8; ++k) {
      const T d = x[i + k] - center;
      lanes[k] += Square ? d * d : d;
    }
  }
  double total = 0;
  for (; i < size; ++i) {
    const T d = x[i] - center;
    total += Square ? d * d : d;
  }
  for (T v : lanes) total += v;
  return total;
}

/// Per channel of planes [N*C]: the sum of f(plane, channel), each plane's part taken
/// in memory order (a channel's planes are far apart), added up in double.
template <typename F>
std::vector<double> per_channel(int64_t n, int64_t c, F&& f) {
  std::vector<double> planes(n * c);
  at::parallel_for(0, n * c, kPlanesPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) planes[p] = f(p, p % c);
  });
  std::vector<double> sums(c, 0.0);
  for (int64_t p = 0; p < n * c; ++p) sums[p % c] += planes[p];
  return sums;
}

/// Per channel of x [N,C,H,W] (contiguous): the mean and the sum of squared deviations.
/// Each plane's mean and squared deviations from it are taken while the plane is in
/// the cache (one pass over memory), then combined exactly (Chan et al.):
/// sq = sum of the planes' sq + sum of hw (plane mean - mean)^2.
template <typename T>
void channel_moments(const at::Tensor& x, std::vector<double>& mean, std::vector<double>& sq) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const T* data = x.data_ptr<T>();
  std::vector<double> plane_mean(n * c), plane_sq(n * c);
  at::parallel_for(0, n * c, kPlanesPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      plane_mean[p] = plane_sum<false>(data + p * hw, hw, T(0)) / double(hw);
      plane_sq[p] = plane_sum<true>(data + p * hw, hw, static_cast<T>(plane_mean[p]));
      // the center is plane_mean rounded to T: correct the sum for that offset
      const double offset = plane_mean[p] - double(static_cast<T>(plane_mean[p]));
      plane_sq[p] -= double(hw) * offset * offset;
    }
  });
  mean.assign(c, 0.0);
  sq.assign(c, 0.0);
  for (int64_t p = 0; p < n * c; ++p) mean[p % c] += plane_mean[p] / double(n);
  for (int64_t p = 0; p < n * c; ++p) {
    const double d = plane_mean[p] - mean[p % c];
    sq[p % c] += plane_sq[p] + double(hw) * d * d;
  }
}

/// running = (1 - m) running + m value, per channel, as nn::BatchNorm2d updates them
/// (the variance unbiased); m is the momentum, or 1 / batches for a cumulative average.
void update_running(
    const BatchNormState& bn, const std::vector<double>& mean, const std::vector<double>& sq,
    int64_t count) {
  if (!bn.running_mean.defined()) return;
  double m = bn.momentum.value_or(0.0);
  if (bn.num_batches_tracked.defined()) {
    bn.num_batches_tracked.add_(1);
    if (!bn.momentum) m = 1.0 / bn.num_batches_tracked.item<double>();
  }
  const auto c = static_cast<int64_t>(mean.size());
  at::Tensor batch_mean = torch::tensor(mean, torch::kDouble).to(bn.running_mean.scalar_type());
  at::Tensor unbiased = torch::tensor(sq, torch::kDouble).div_(double(count - 1));
  bn.running_mean.mul_(1 - m).add_(batch_mean.view({c}), m);
  bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.scalar_type()).view({c}), m);
}

/// One plane's input value at each window's kept position, into `out` (the pooled
/// plane's size). The position is an index, not a select: random positions would
/// mispredict every branch.
template <typename T>
void gather_kept(const T* x, const T* where, T* out, int64_t w, int64_t oh, int64_t ow) {
  for (int64_t r = 0; r < oh; ++r) {
    const T* top = x + (2 * r) * w;
    const T* k = where + r * ow;
    T* o = out + r * ow;
    for (int64_t j = 0; j < ow; ++j) {
      const auto at = static_cast<int64_t>(k[j]);
      o[j] = top[(at >> 1) * w + 2 * j + (at & 1)];
    }
  }
}

/// Sum over i of g[i] (x[i] - center), in 8 lanes of T, added up in double.
template <typename T>
double plane_dot(const T* g, const T* x, int64_t size, T center) {
  T lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= size; i += 8) {
    for (int k = 0; k < 8; ++k) lanes[k] += g[i + k] * (x[i + k] - center);
  }
  double total = 0;
  for (; i < size; ++i) total += g[i] * (x[i] - center);
  for (T v : lanes) total += v;
  return total;
}

/// The backward pass's per-channel sums over the kept positions (the only ones with a
/// gradient): of dy, and of dy (x - mean), from the kept values the forward saved.
template <typename T>
void gradient_sums(
    const at::Tensor& kept, const at::Tensor& grad, const std::vector<double>& mean,
    std::vector<double>& sum_dy, std::vector<double>& dotp) {
  const int64_t n = grad.size(0), c = grad.size(1), ohw = grad.size(2) * grad.size(3);
  const T* ks = kept.data_ptr<T>();
  const T* gs = grad.data_ptr<T>();
  sum_dy = per_channel(
      n, c, [&](int64_t p, int64_t) { return plane_sum<false>(gs + p * ohw, ohw, T(0)); });
  dotp = per_channel(n, c, [&](int64_t p, int64_t ch) {
    return plane_dot(gs + p * ohw, ks + p * ohw, ohw, static_cast<T>(mean[ch]));
  });
}

/// One plane of the input's gradient: dx = (dy - mean(dy) - (x - mean) k) s, written
/// as x a + b everywhere, then s dy added at each window's kept position.
template <typename T>
void bn_unpool_plane(
    const T* x, const T* grad, const T* where, T* out, int64_t h, int64_t w, int64_t oh, int64_t ow,
    T a, T b, T s) {
  for (int64_t i = 0; i < h * w; ++i) out[i] = x[i] * a + b;
  for (int64_t r = 0; r < oh; ++r) {
    for (int64_t j = 0; j < ow; ++j) {
      const auto at = static_cast<int64_t>(where[r * ow + j]);
      out[(2 * r + (at >> 1)) * w + 2 * j + (at & 1)] += grad[r * ow + j] * s;
    }
  }
}

class BatchNormMaxPool2x2 : public torch::autograd::Function<BatchNormMaxPool2x2> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
      const at::Tensor& bias, const BatchNormState& bn) {
    const at::Tensor x = input.contiguous();
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    const int64_t oh = h / 2, ow = w / 2, count = n * h * w;
    std::vector<double> mean, sq;
    AT_DISPATCH_FLOATING_TYPES(
        x.scalar_type(), "batch_norm_moments", [&] { channel_moments<scalar_t>(x, mean, sq); });
    update_running(bn, mean, sq, count);
    std::vector<double> invstd(c);
    for (int64_t ch = 0; ch < c; ++ch) invstd[ch] = 1.0 / std::sqrt(sq[ch] / count + bn.eps);
    at::Tensor out = torch::empty({n, c, oh, ow}, x.options());
    at::Tensor where = torch::empty({n, c, oh, ow}, x.options());
    at::Tensor kept = torch::empty({n, c, oh, ow}, x.options());  // x at the kept positions
    const at::Tensor gamma = weight.to(torch::kDouble), beta = bias.to(torch::kDouble);
    const double* g = gamma.data_ptr<double>();
    const double* b = beta.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_max_pool_2x2", [&] {
      const scalar_t* in = x.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      scalar_t* k = where.data_ptr<scalar_t>();
      scalar_t* v = kept.data_ptr<scalar_t>();
      at::parallel_for(0, n * c, kPlanesPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const int64_t ch = p % c;
          // As ATen: y = x alpha + beta with alpha = invstd gamma, beta = bias - mean alpha.
          const auto alpha = static_cast<scalar_t>(invstd[ch] * g[ch]);
          const auto shift = static_cast<scalar_t>(b[ch] - mean[ch] * invstd[ch] * g[ch]);
          const auto affine = [alpha, shift](scalar_t v) { return v * alpha + shift; };
          pool_plane(in + p * h * w, o + p * oh * ow, k + p * oh * ow, w, oh, ow, affine);
          gather_kept(in + p * h * w, k + p * oh * ow, v + p * oh * ow, w, oh, ow);
        }
      });
    });
    ctx->save_for_backward({x, where, weight, kept});
    ctx->saved_data["mean"] = torch::tensor(mean, torch::kDouble);
    ctx->saved_data["invstd"] = torch::tensor(invstd, torch::kDouble);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &where = saved[1];
    const at::Tensor gamma = saved[2].to(torch::kDouble);
    const at::Tensor grad = grads[0].contiguous();
    const at::Tensor mean_t = ctx->saved_data["mean"].toTensor();
    const at::Tensor invstd_t = ctx->saved_data["invstd"].toTensor();
    const std::vector<double> mean(
        mean_t.data_ptr<double>(), mean_t.data_ptr<double>() + mean_t.numel());
    const double* invstd = invstd_t.data_ptr<double>();
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    const int64_t oh = grad.size(2), ow = grad.size(3);
    const double count = double(n * h * w);
    std::vector<double> sum_dy, dotp;
    at::Tensor dx = torch::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_max_pool_2x2_backward", [&] {
      gradient_sums<scalar_t>(saved[3], grad, mean, sum_dy, dotp);
      const scalar_t* xs = x.data_ptr<scalar_t>();
      const scalar_t* gs = grad.data_ptr<scalar_t>();
      const scalar_t* ks = where.data_ptr<scalar_t>();
      scalar_t* o = dx.data_ptr<scalar_t>();
      const double* gm = gamma.data_ptr<double>();
      at::parallel_for(0, n * c, kPlanesPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const int64_t ch = p % c;
          const double s = invstd[ch] * gm[ch];
          const double k = dotp[ch] * invstd[ch] * invstd[ch] / count;
          const double a = -k * s, b = (mean[ch] * k - sum_dy[ch] / count) * s;
          bn_unpool_plane<scalar_t>(
              xs + p * h * w,
              gs + p * oh * ow,
              ks + p * oh * ow,
              o + p * h * w,
              h,
              w,
              oh,
              ow,
              scalar_t(a),
              scalar_t(b),
              scalar_t(s));
        }
      });
    });
    at::Tensor grad_weight = torch::tensor(dotp, torch::kDouble).mul_(invstd_t);
    at::Tensor grad_bias = torch::tensor(sum_dy, torch::kDouble);
    const auto type = saved[2].scalar_type();
    return {dx, grad_weight.to(type), grad_bias.to(type), at::Tensor()};
  }
};

/// The kernels' domain: float or double on the CPU, at least one 2x2 window, and
/// --kernels auto; else ATen.
bool fits_cpu_kernel(const at::Tensor& x) {
  return cpu_kernels() == CpuKernels::kAuto && x.device().is_cpu() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) && x.size(2) >= 2 &&
         x.size(3) >= 2;
}

}  // namespace

at::Tensor batch_norm_max_pool_2x2(const at::Tensor& x, const BatchNormState& bn) {
  TORCH_CHECK(x.dim() == 4, "batch_norm_max_pool_2x2 expects [N,C,H,W], got ", x.sizes());
  TORCH_CHECK(
      x.size(0) * x.size(2) * x.size(3) > 1,
      "batch norm in training needs more than 1 value per channel, got ",
      x.sizes());
  if (!fits_cpu_kernel(x) || !bn.weight.defined() || !bn.bias.defined()) {
    if (bn.num_batches_tracked.defined()) bn.num_batches_tracked.add_(1);
    const bool counted = bn.num_batches_tracked.defined();
    const double m = bn.momentum ? *bn.momentum
                     : counted   ? 1.0 / bn.num_batches_tracked.item<double>()
                                 : 0.0;
    return max_pool_2x2(torch::batch_norm(
        x,
        bn.weight,
        bn.bias,
        bn.running_mean,
        bn.running_var,
        /*training=*/true,
        m,
        bn.eps,
        /*cudnn_enabled=*/true));
  }
  return BatchNormMaxPool2x2::apply(x, bn.weight, bn.bias, bn);
}

at::Tensor max_pool_2x2(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "max_pool_2x2 expects [N,C,H,W], got ", x.sizes());
  if (!fits_cpu_kernel(x)) return torch::max_pool2d(x, 2);
  return MaxPool2x2::apply(x);
}

}  // namespace patchwise
