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
#include <functional>
#include <utility>
#include <vector>

namespace patchwise::detail::blocked {

/// Whether a residual backbone should take the blocked path for `x`: the
/// choice of set_cpu_kernels, a float32 CPU input outside autocast, and oneDNN's own
/// kernels for the blocked layout here (blocked_kernels_available).
bool use_for(const at::Tensor& x);

/// Whether a 3x3 stride-1 convolution of `channels` in and out on an output of
/// `height` x `width` runs as Winograd here (AVX-512, 32 channels or more, 4x4 tiles
/// covering the output with little waste). Evaluation takes the blocked path only where
/// one does: measured on the Xeon 6/167, ResNet-18 inference on 32x32 ran 1.8 times as
/// fast (137 against 76 images/s), while without Winograd the layout alone did not pay.
bool winograd_for(int64_t channels, int64_t height, int64_t width);

/// Blocked -> [N,C] averaged over H and W (global average pooling).
at::Tensor mean_pool(const at::Tensor& xb);

/// A convolution without bias, padding k/2: blocked `xb`, or a plain [N,C,H,W] one (a
/// network's first layer, any C), -> blocked output. `weight` is [O,C,k,k] in any memory
/// format. Winograd where the source is blocked, k = 3, stride 1, both channel counts
/// are at least 32 and 4x4 tiles cover the output with little waste; direct otherwise.
at::Tensor conv(const at::Tensor& xb, const at::Tensor& weight, int64_t stride);

/// Whether `channels` fill whole blocks of this processor's layout.
bool holds_blocks(int64_t channels);

/// A convolution's weight [O,C,k,k] and bias [O] (undefined: none), as evaluation
/// computes with them.
using MakeWeights = std::function<std::pair<at::Tensor, at::Tensor>()>;

/// Evaluation's convolution (no autograd): `x` plain [N,C,H,W] (a first layer, any C) or
/// blocked, to blocked; stride 1, padding `pad`, with `relu` a ReLU fused after it
/// (oneDNN's post-op). Winograd where conv would take it. Its weight and bias come from
/// `make` (a batch norm folded in, say), which reads only `sources` (the first: a weight
/// of their shape): they are made and put in oneDNN's layout once, and remembered while
/// the first source is the same tensor and every source holds the same values.
at::Tensor conv_inference(
    const at::Tensor& x, const std::vector<at::Tensor>& sources, const MakeWeights& make,
    int64_t pad, bool relu);
/// 2x2 max pooling of stride 2 (odd sides floored), blocked to blocked, without autograd.
at::Tensor max_pool_2x2(const at::Tensor& xb);
/// Blocked -> [N,C,H,W], contiguous.
at::Tensor from_blocked(const at::Tensor& xb);

/// Batch norm as torch::nn::BatchNorm2d: in training mode with the statistics of the
/// batch, updating the layer's running statistics, in eval mode with these (no
/// gradients then); `relu`: ReLU fused after it.
at::Tensor batch_norm(const at::Tensor& xb, torch::nn::BatchNorm2dImpl& bn, bool relu);

}  // namespace patchwise::detail::blocked
