#pragma once
// 2x2 max pooling with stride 2 (floor mode), the backbones' only pooling, with its
// own CPU kernels: LibTorch 1.13's max_pool2d_with_indices walks each window with
// scalar code and zero-fills the whole gradient before scattering into it, and was
// the largest single cost of a small-cnn training step. Same values and gradients
// as torch::max_pool2d(x, 2) bit for bit: the first maximum of a window in row-major
// order wins, NaN propagates. Other devices use torch::max_pool2d.

#include <ATen/core/Tensor.h>

namespace patchwise {

/// [N,C,H,W] float or double -> [N,C,H/2,W/2]; differentiable.
at::Tensor max_pool_2x2(const at::Tensor& x);

}  // namespace patchwise
