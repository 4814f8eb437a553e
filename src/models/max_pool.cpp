#include "patchwise/models/max_pool.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

namespace patchwise {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// Output planes handled per parallel task (each plane is independent).
constexpr int64_t kPlanesPerTask = 4;

/// One plane: values and (when `where` is not null) the window position 0..3 of each
/// maximum. Branch-free selects, so the compiler vectorizes the row loop.
template <typename T>
void pool_plane(const T* in, T* out, T* where, int64_t w, int64_t oh, int64_t ow) {
  for (int64_t i = 0; i < oh; ++i) {
    const T* top = in + (2 * i) * w;
    const T* bottom = top + w;
    T* o = out + i * ow;
    T* k = where ? where + i * ow : nullptr;  // positions kept in T: the loop stays one width
    // As ATen's kernel: in row-major order a larger value or a NaN takes over (so the
    // last NaN of a window wins). Written without branches or arrays so it vectorizes.
    if (k) {
      for (int64_t j = 0; j < ow; ++j) {
        const T a = top[2 * j], b = top[2 * j + 1], c = bottom[2 * j], d = bottom[2 * j + 1];
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
        const T a = top[2 * j], b = top[2 * j + 1], c = bottom[2 * j], d = bottom[2 * j + 1];
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

}  // namespace

at::Tensor max_pool_2x2(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "max_pool_2x2 expects [N,C,H,W], got ", x.sizes());
  if (!x.device().is_cpu() || !at::isFloatingType(x.scalar_type()) ||
      x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 || x.size(2) < 2 ||
      x.size(3) < 2) {
    return torch::max_pool2d(x, 2);
  }
  return MaxPool2x2::apply(x);
}

}  // namespace patchwise
