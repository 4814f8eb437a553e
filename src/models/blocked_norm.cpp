// The blocked batch norm (blocked.h's batch_norm): oneDNN's, with the ReLU fused, for
// training with the batch's statistics and for evaluation with the running ones.

#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <tuple>
#include <unordered_map>

#include "blocked.h"
#include "blocked_dnnl.h"

namespace patchwise::detail::blocked {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct NormPrimitives {
  dnnl::batch_normalization_forward::primitive_desc forward_pd;
  dnnl::batch_normalization_backward::primitive_desc backward_pd;
  dnnl::batch_normalization_forward forward;
  dnnl::batch_normalization_backward backward;
};

std::unique_ptr<NormPrimitives> make_norm(const Dims& dims, float eps, bool relu, bool inference) {
  using flags = dnnl::normalization_flags;
  const flags f = relu ? flags::use_scale | flags::use_shift | flags::fuse_norm_relu
                       : flags::use_scale | flags::use_shift;
  const memory::desc d = blocked_desc(dims);
  auto p = std::make_unique<NormPrimitives>();
  if (inference) {
    p->forward_pd = dnnl::batch_normalization_forward::primitive_desc(
        {dnnl::prop_kind::forward_inference, d, eps, f | flags::use_global_stats},
        attributes(),
        cpu_engine());
    p->forward = dnnl::batch_normalization_forward(p->forward_pd);
    return p;
  }
  p->forward_pd = dnnl::batch_normalization_forward::primitive_desc(
      {dnnl::prop_kind::forward_training, d, eps, f}, attributes(), cpu_engine());
  p->backward_pd = dnnl::batch_normalization_backward::primitive_desc(
      {dnnl::prop_kind::backward, d, d, eps, f}, attributes(), cpu_engine(), p->forward_pd);
  p->forward = dnnl::batch_normalization_forward(p->forward_pd);
  p->backward = dnnl::batch_normalization_backward(p->backward_pd);
  return p;
}

/// Training's primitives (the batch's statistics, forward and backward), or with
/// `inference` the forward alone with given statistics; kept (kPrimitivesKept at most).
std::shared_ptr<NormPrimitives> norm_primitives(
    const Dims& dims, float eps, bool relu, bool inference = false) {
  static BoundedCache<std::tuple<Dims, float, bool, bool, int64_t>, NormPrimitives> cache(
      kPrimitivesKept);
  return cache.get({dims, eps, relu, inference, threads()}, [&] {
    return make_norm(dims, eps, relu, inference);
  });
}

class BlockedBatchNorm : public torch::autograd::Function<BlockedBatchNorm> {
 public:
  /// `running` holds running_mean and running_var, updated with `momentum`.
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
      const at::Tensor& bias, at::Tensor running_mean, at::Tensor running_var, double momentum,
      double eps, bool relu) {
    const at::Tensor xb = input.contiguous();
    const Dims dims = logical_dims(xb);
    const std::shared_ptr<NormPrimitives> held =
        norm_primitives(dims, static_cast<float>(eps), relu);
    NormPrimitives& p = *held;
    const at::Tensor scale = weight.contiguous(), shift = bias.contiguous();
    at::Tensor y = at::empty_like(xb);
    at::Tensor mean = at::empty({dims[1]}, xb.options()), var = at::empty({dims[1]}, xb.options());
    at::Tensor ws = relu ? at::empty(
                               {int64_t(p.forward_pd.workspace_desc().get_size())},
                               xb.options().dtype(at::kByte))
                         : at::Tensor();
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, wrap(p.forward_pd.src_desc(), xb)},
        {DNNL_ARG_DST, wrap(p.forward_pd.dst_desc(), y)},
        {DNNL_ARG_MEAN, wrap(p.forward_pd.mean_desc(), mean)},
        {DNNL_ARG_VARIANCE, wrap(p.forward_pd.variance_desc(), var)},
        {DNNL_ARG_SCALE, wrap(p.forward_pd.weights_desc(), scale)},
        {DNNL_ARG_SHIFT, wrap(p.forward_pd.weights_desc(), shift)}};
    if (relu) args.emplace(DNNL_ARG_WORKSPACE, wrap(p.forward_pd.workspace_desc(), ws));
    run(p.forward, p.forward_pd, args);
    // The running variance is unbiased, as ATen's: the batch's times n / (n - 1).
    const double count = double(dims[0] * dims[2] * dims[3]);
    running_mean.mul_(1 - momentum).add_(mean, momentum);
    running_var.mul_(1 - momentum).add_(var, momentum * count / std::max(count - 1, 1.0));
    ctx->save_for_backward({xb, scale, shift, mean, var, ws});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &xb = s[0], &scale = s[1], &shift = s[2], &mean = s[3], &var = s[4],
                     &ws = s[5];
    const bool relu = ctx->saved_data["relu"].toBool();
    const Dims dims = logical_dims(xb);
    const std::shared_ptr<NormPrimitives> held =
        norm_primitives(dims, float(ctx->saved_data["eps"].toDouble()), relu);
    NormPrimitives& p = *held;
    const at::Tensor dy = grads[0].contiguous();
    at::Tensor dx = at::empty_like(xb);
    at::Tensor dscale = at::empty_like(scale), dshift = at::empty_like(shift);
    const auto& pd = p.backward_pd;
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, wrap(pd.src_desc(), xb)},
        {DNNL_ARG_DIFF_DST, wrap(pd.diff_dst_desc(), dy)},
        {DNNL_ARG_MEAN, wrap(pd.mean_desc(), mean)},
        {DNNL_ARG_VARIANCE, wrap(pd.variance_desc(), var)},
        {DNNL_ARG_SCALE, wrap(pd.weights_desc(), scale)},
        {DNNL_ARG_SHIFT, wrap(pd.weights_desc(), shift)},
        {DNNL_ARG_DIFF_SRC, wrap(pd.diff_src_desc(), dx)},
        {DNNL_ARG_DIFF_SCALE, wrap(pd.diff_weights_desc(), dscale)},
        {DNNL_ARG_DIFF_SHIFT, wrap(pd.diff_weights_desc(), dshift)}};
    if (relu) args.emplace(DNNL_ARG_WORKSPACE, wrap(pd.workspace_desc(), ws));
    run(p.backward, p.backward_pd, args);
    return {
        dx, dscale, dshift, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

/// Batch norm with the layer's running statistics, without autograd (evaluation).
at::Tensor batch_norm_inference(const at::Tensor& xb, torch::nn::BatchNorm2dImpl& bn, bool relu) {
  const Dims dims = logical_dims(xb);
  const std::shared_ptr<NormPrimitives> held =
      norm_primitives(dims, float(bn.options.eps()), relu, /*inference=*/true);
  NormPrimitives& p = *held;
  const at::Tensor scale = bn.weight.contiguous(), shift = bn.bias.contiguous();
  at::Tensor y = at::empty_like(xb);
  const auto& pd = p.forward_pd;
  run(p.forward,
      pd,
      {{DNNL_ARG_SRC, wrap(pd.src_desc(), xb)},
       {DNNL_ARG_DST, wrap(pd.dst_desc(), y)},
       {DNNL_ARG_MEAN, wrap(pd.mean_desc(), bn.running_mean)},
       {DNNL_ARG_VARIANCE, wrap(pd.variance_desc(), bn.running_var)},
       {DNNL_ARG_SCALE, wrap(pd.weights_desc(), scale)},
       {DNNL_ARG_SHIFT, wrap(pd.weights_desc(), shift)}});
  return y;
}

}  // namespace

at::Tensor batch_norm(const at::Tensor& xb, torch::nn::BatchNorm2dImpl& bn, bool relu) {
  const auto& o = bn.options;
  if (!o.affine() || !o.track_running_stats()) {
    throw std::logic_error("blocked::batch_norm: needs an affine layer with running statistics");
  }
  if (!bn.is_training()) return batch_norm_inference(xb.contiguous(), bn, relu);
  bn.num_batches_tracked.add_(1);
  const double momentum =
      o.momentum() ? *o.momentum() : 1.0 / double(bn.num_batches_tracked.item<int64_t>());
  return BlockedBatchNorm::apply(
      xb, bn.weight, bn.bias, bn.running_mean, bn.running_var, momentum, o.eps(), relu);
}

}  // namespace patchwise::detail::blocked
