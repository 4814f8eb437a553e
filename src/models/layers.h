#pragma once
// Building blocks shared by the backbones in src/models/ (not part of the API), and
// each backbone's registry entry (collected in src/models/backbone.cpp).

#include <torch/torch.h>

#include <cstdint>

#include "patchwise/models/registry.h"

namespace patchwise::detail {

/// A convolution that takes a one-channel input through LibTorch's direct (im2col +
/// matrix product) kernel on the CPU: oneDNN, LibTorch's default there, is several
/// times slower with a single input channel (measured 4-10x on the first layers here,
/// bench/step_breakdown). Same parameters, same names as nn::Conv2d; other inputs and
/// devices go through nn::Conv2d itself.
class GrayConvImpl : public torch::nn::Conv2dImpl {
 public:
  explicit GrayConvImpl(const torch::nn::Conv2dOptions& options);
  at::Tensor forward(const at::Tensor& x);
};
TORCH_MODULE(GrayConv);

/// Appends conv3x3 -> [batch norm] -> [2x2 max pool] -> ReLU to `seq`. ReLU and max
/// pooling commute (ReLU is monotonic), so pooling first gives the same values and
/// gradients while the ReLU touches a quarter of the elements. The module indices are
/// those of conv -> [bn] -> ReLU -> [pool], so model files are unaffected.
void add_conv(
    torch::nn::Sequential& seq, int64_t in, int64_t out, int64_t padding, bool batch_norm,
    bool pool);

/// Runs a stack built by add_conv. In training, a batch norm followed by the pool runs
/// as one step, batch_norm_max_pool_2x2: the same function with one pass less over the
/// largest activations. Evaluation without gradients under kernels auto runs on oneDNN's
/// blocked layout where the processor has it (models/kernels.h): each group one
/// convolution, its batch norm folded into weights prepared once, the ReLU fused, then
/// oneDNN's pooling; the result comes back as [N,C,H,W].
at::Tensor forward_stack(torch::nn::Sequential& seq, at::Tensor x);

/// Multiply-adds of a k x k convolution from `in` to `out` channels giving side x side.
inline int64_t conv_macs(int64_t side, int64_t in, int64_t out, int64_t k) {
  return side * side * in * out * k * k;
}

BackboneInfo small_cnn_backbone();
BackboneInfo vgg16_backbone();
BackboneInfo resnet20_backbone();
BackboneInfo resnet56_backbone();
BackboneInfo resnet18_backbone();
BackboneInfo bagnet11_backbone();

}  // namespace patchwise::detail
