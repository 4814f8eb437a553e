#pragma once
// 2x2 max pooling with stride 2 (floor mode), the backbones' only pooling, with its
// own CPU kernels: LibTorch 1.13's max_pool2d_with_indices walks each window with
// scalar code and zero-fills the whole gradient before scattering into it, and was
// the largest single cost of a small-cnn training step. Same values and gradients
// as torch::max_pool2d(x, 2) bit for bit: the first maximum of a window in row-major
// order wins, NaN propagates. Other devices, and --kernels aten (models/kernels.h), use
// torch::max_pool2d.

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace patchwise {

/// [N,C,H,W] float or double -> [N,C,H/2,W/2]; differentiable.
at::Tensor max_pool_2x2(const at::Tensor& x);

/// A batch norm layer's parameters, running statistics and options (nn::BatchNorm2d's).
struct BatchNormState {
  at::Tensor weight, bias;               ///< [C], the affine transform
  at::Tensor running_mean, running_var;  ///< [C], updated in place
  at::Tensor num_batches_tracked;        ///< scalar int64, incremented
  c10::optional<double> momentum = 0.1;  ///< none: a cumulative average
  double eps = 1e-5;
};

/// max_pool_2x2(batch_norm(x)) with the batch's statistics (training mode), the running
/// statistics updated as nn::BatchNorm2d updates them. On the CPU one fused step: the
/// normalized activations are never written, and the backward pass writes the input's
/// gradient in one pass instead of zero-filling, scattering and normalizing (the two
/// were a third of a tiled small-cnn training step). Equal to the unfused layers up to
/// rounding: the statistics are summed in another order. Differentiable in x, weight
/// and bias.
at::Tensor batch_norm_max_pool_2x2(const at::Tensor& x, const BatchNormState& bn);

}  // namespace patchwise
