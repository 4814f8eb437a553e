#pragma once
// Training and evaluation on oneDNN's blocked layout (not part of the API; see
// models/kernels.h).
// A blocked tensor holds [N,C,H,W] as a contiguous [N,C/b,H,W,b]: oneDNN's nChw16c with
// AVX-512 (b = 16, which its Winograd convolutions require) or nChw8c with AVX2 (b = 8),
// the layouts its own kernels work in. Elementwise ATen operations (the residual
// addition, ReLU) work on it as they are; convolutions and batch norms go through the
// functions below, each differentiable (and without autograd when gradients are off).

#include <torch/torch.h>

#include <cstdint>

namespace patchwise::detail::blocked {

/// Whether a residual backbone should take the blocked path for `x`: the
/// choice of set_train_kernels, a float32 CPU input outside autocast, and oneDNN's own
/// kernels for the blocked layout here (blocked_kernels_available).
bool use_for(const at::Tensor& x);

/// Whether a 3x3 stride-1 convolution of `channels` in and out on an output of
/// `height` x `width` runs as Winograd here (AVX-512, 32 channels or more, 4x4 tiles
/// covering the output with little waste). Evaluation takes the blocked path only where
/// one does: measured on the Xeon 6/167, ResNet-18 inference on 32x32 ran 1.8 times as
/// fast (137 against 76 images/s), while without Winograd the layout alone did not pay.
bool winograd_for(int64_t channels, int64_t height, int64_t width);

/// [N,C,H,W] (any memory format, C a multiple of 16) -> blocked.
at::Tensor to_blocked(const at::Tensor& x);
/// Blocked -> [N,C] averaged over H and W (global average pooling).
at::Tensor mean_pool(const at::Tensor& xb);

/// A convolution without bias, padding k/2: blocked `xb` -> blocked output. `weight` is
/// [O,C,k,k] in any memory format. Winograd where k = 3, stride 1, both channel counts
/// are at least 32 and 4x4 tiles cover the output with little waste; direct otherwise.
at::Tensor conv(const at::Tensor& xb, const at::Tensor& weight, int64_t stride);

/// Batch norm as torch::nn::BatchNorm2d: in training mode with the statistics of the
/// batch, updating the layer's running statistics, in eval mode with these (no
/// gradients then); `relu`: ReLU fused after it.
at::Tensor batch_norm(const at::Tensor& xb, torch::nn::BatchNorm2dImpl& bn, bool relu);

}  // namespace patchwise::detail::blocked
