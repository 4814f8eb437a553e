#include "layers.h"

#include <vector>

#include "blocked.h"
#include "patchwise/models/kernels.h"
#include "patchwise/models/max_pool.h"

namespace patchwise::detail {

namespace nn = torch::nn;

GrayConvImpl::GrayConvImpl(const nn::Conv2dOptions& options) : nn::Conv2dImpl(options) {}

at::Tensor GrayConvImpl::forward(const at::Tensor& x) {
  const auto& o = options;
  const bool direct = cpu_kernels() == CpuKernels::kAuto && x.device().is_cpu() &&
                      weight.size(1) == 1 && o.groups() == 1 &&
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

/// One add_conv group: its convolution, its batch norm (null without) and whether it pools.
struct ConvGroup {
  nn::Conv2dImpl* conv = nullptr;
  nn::BatchNorm2dImpl* bn = nullptr;
  bool pool = false;
};

/// A 3x3 stride-1 convolution with bias and zero padding, as add_conv makes it.
bool plain_conv3x3(const nn::Conv2dImpl& conv) {
  const auto& o = conv.options;
  return (*o.kernel_size())[0] == 3 && (*o.kernel_size())[1] == 3 && (*o.stride())[0] == 1 &&
         (*o.stride())[1] == 1 && (*o.dilation())[0] == 1 && (*o.dilation())[1] == 1 &&
         o.groups() == 1 && o.bias() &&
         c10::holds_alternative<torch::ExpandingArray<2>>(o.padding()) &&
         c10::holds_alternative<torch::enumtype::kZeros>(o.padding_mode()) &&
         (*c10::get<torch::ExpandingArray<2>>(o.padding()))[0] ==
             (*c10::get<torch::ExpandingArray<2>>(o.padding()))[1];
}

/// The stack's add_conv groups, or none when a layer is not where add_conv puts it.
std::vector<ConvGroup> conv_groups(nn::Sequential& seq) {
  std::vector<ConvGroup> groups;
  const auto layers = seq->children();
  for (size_t i = 0; i < layers.size();) {
    ConvGroup g;
    g.conv = dynamic_cast<nn::Conv2dImpl*>(layers[i].get());
    if (!g.conv || !plain_conv3x3(*g.conv)) return {};
    ++i;
    if (i < layers.size()) g.bn = dynamic_cast<nn::BatchNorm2dImpl*>(layers[i].get());
    if (g.bn) ++i;
    g.pool = i < layers.size() && dynamic_cast<nn::FunctionalImpl*>(layers[i].get());
    if (g.pool) ++i;
    if (i == layers.size() || !dynamic_cast<nn::ReLUImpl*>(layers[i].get())) return {};
    ++i;
    groups.push_back(g);
  }
  return groups;
}

/// Whether `groups` can evaluate on oneDNN's blocked layout: outputs in whole blocks,
/// batch norms with running statistics.
bool blocked_groups(const std::vector<ConvGroup>& groups) {
  if (groups.empty()) return false;
  for (const ConvGroup& g : groups) {
    if (!blocked::holds_blocks(g.conv->options.out_channels())) return false;
    if (g.bn && !g.bn->options.track_running_stats()) return false;
  }
  return true;
}

/// The tensors folded() reads.
std::vector<at::Tensor> fold_sources(const ConvGroup& g) {
  std::vector<at::Tensor> sources = {g.conv->weight, g.conv->bias};
  if (g.bn) {
    for (const at::Tensor& t : {g.bn->running_mean, g.bn->running_var}) sources.push_back(t);
    if (g.bn->options.affine()) {
      for (const at::Tensor& t : {g.bn->weight, g.bn->bias}) sources.push_back(t);
    }
  }
  return sources;
}

/// The group's weight and bias with its batch norm (evaluation's) folded in:
/// w * s and (b - mean) * s + beta, s = gamma / sqrt(var + eps).
std::pair<at::Tensor, at::Tensor> folded(const ConvGroup& g) {
  if (!g.bn) return {g.conv->weight, g.conv->bias};
  const auto& bn = *g.bn;
  at::Tensor scale = (bn.running_var + bn.options.eps()).rsqrt();
  if (bn.options.affine()) scale = scale * bn.weight;
  at::Tensor shift = (g.conv->bias - bn.running_mean) * scale;
  if (bn.options.affine()) shift = shift + bn.bias;
  return {g.conv->weight * scale.view({-1, 1, 1, 1}), shift};
}

/// The stack's evaluation on the blocked layout: each group one convolution with its batch
/// norm folded in and the ReLU fused (ReLU commutes with max pooling), then the pool.
at::Tensor forward_blocked(const std::vector<ConvGroup>& groups, at::Tensor x) {
  for (const ConvGroup& g : groups) {
    const int64_t pad = (*c10::get<torch::ExpandingArray<2>>(g.conv->options.padding()))[0];
    x = blocked::conv_inference(
        x, fold_sources(g), [&g] { return folded(g); }, pad, /*relu=*/true);
    if (g.pool) x = blocked::max_pool_2x2(x);
  }
  return blocked::from_blocked(x);
}

}  // namespace

at::Tensor forward_stack(nn::Sequential& seq, at::Tensor x) {
  // Evaluation without gradients on the processor's blocked layout (blocked::use_for).
  if (!at::GradMode::is_enabled() && !seq->is_training() && blocked::use_for(x)) {
    const std::vector<ConvGroup> groups = conv_groups(seq);
    if (blocked_groups(groups)) return forward_blocked(groups, x);
  }
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
