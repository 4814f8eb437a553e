#include "layers.h"

#include "patchwise/models/max_pool.h"

namespace patchwise::detail {

namespace nn = torch::nn;

GrayConvImpl::GrayConvImpl(const nn::Conv2dOptions& options) : nn::Conv2dImpl(options) {}

at::Tensor GrayConvImpl::forward(const at::Tensor& x) {
  const auto& o = options;
  const bool direct = x.device().is_cpu() && weight.size(1) == 1 && o.groups() == 1 &&
                      c10::holds_alternative<torch::ExpandingArray<2>>(o.padding()) &&
                      c10::holds_alternative<torch::enumtype::kZeros>(o.padding_mode()) &&
                      (*o.dilation())[0] == 1 && (*o.dilation())[1] == 1;
  if (!direct) return nn::Conv2dImpl::forward(x);
  const auto& padding = c10::get<torch::ExpandingArray<2>>(o.padding());
  return at::thnn_conv2d(x, weight, *o.kernel_size(), bias, *o.stride(), *padding);
}

void add_conv(
    nn::Sequential& seq, int64_t in, int64_t out, int64_t padding, bool batch_norm, bool pool) {
  const auto options = nn::Conv2dOptions(in, out, /*kernel_size=*/3).padding(padding);
  if (in == 1) {
    seq->push_back(GrayConv(options));
  } else {
    seq->push_back(nn::Conv2d(options));
  }
  if (batch_norm) seq->push_back(nn::BatchNorm2d(out));
  if (pool) seq->push_back(nn::Functional([](const at::Tensor& x) { return max_pool_2x2(x); }));
  seq->push_back(nn::ReLU(nn::ReLUOptions().inplace(true)));
}

namespace {

/// The layer's state as batch_norm_max_pool_2x2 takes it.
BatchNormState batch_norm_state(nn::BatchNorm2dImpl& bn) {
  return {
      bn.weight,
      bn.bias,
      bn.running_mean,
      bn.running_var,
      bn.num_batches_tracked,
      bn.options.momentum(),
      bn.options.eps()};
}

}  // namespace

at::Tensor forward_stack(nn::Sequential& seq, at::Tensor x) {
  auto layer = seq->begin();
  const auto layers = static_cast<std::ptrdiff_t>(seq->size());
  for (std::ptrdiff_t i = 0; i < layers; ++i) {
    auto bn = std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(layer[i].ptr());
    const bool pool_next =
        i + 1 < layers && std::dynamic_pointer_cast<nn::FunctionalImpl>(layer[i + 1].ptr());
    if (bn && pool_next && bn->is_training()) {
      x = batch_norm_max_pool_2x2(x, batch_norm_state(*bn));
      ++i;
    } else {
      x = layer[i].forward(x);
    }
  }
  return x;
}

}  // namespace patchwise::detail
