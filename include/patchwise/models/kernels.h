#pragma once
// Which kernels the backbones run with on the CPU, in training and in evaluation alike
// (the flag --kernels of every command that runs a model; auto unless set).
//
// auto: where oneDNN has kernels of its own for its blocked layout (processors with
//   AVX-512: nChw16c; with AVX2: nChw8c), a training pass, and an evaluation pass
//   without gradients, keep the activations in that layout from the stem to the pooling
//   and call oneDNN directly: with AVX-512 Winograd F(4x4, 3x3) for the 3x3 stride-1
//   convolutions of 32 channels and more, its direct kernels for the others, its batch
//   norm with the ReLU fused (in evaluation with the running statistics). small-cnn and
//   VGG16 evaluate without gradients on that layout too: each convolution with its batch
//   norm folded in and the ReLU fused, oneDNN's pooling. Elsewhere, and in evaluation
//   with gradients, LibTorch's kernels.
//   Under auto the 2x2 max pooling (with the batch norm before it in training) and the
//   convolution of grey inputs run the project's own CPU kernels (models/max_pool.h,
//   layers.h's GrayConv): the same values, faster.
// aten: LibTorch's kernels everywhere, as PyTorch computes (convolutions through
//   torch::conv2d and LibTorch's oneDNN calls, its batch norm, torch::max_pool2d).
// Both compute the same function; Winograd rounds differently (docs/performance.md).

#include <string>

namespace patchwise {

enum class CpuKernels { kAuto, kAten };

/// "auto" or "aten"; throws OptionError("kernels", ...) on another name.
CpuKernels parse_cpu_kernels(const std::string& name);
const char* cpu_kernels_name(CpuKernels k);

/// The process-wide choice (default kAuto).
void set_cpu_kernels(CpuKernels k);
CpuKernels cpu_kernels();

/// Whether this processor's oneDNN has its own kernels for a blocked layout (the
/// condition of auto: AVX2 or AVX-512).
bool blocked_kernels_available();
/// Whether it also offers Winograd convolutions (AVX-512), which auto then uses.
bool winograd_available();

/// A promise that the models' weights hold still while it lives in this thread (one
/// pass split in chunks): evaluation's prepared weights (small-cnn's and VGG16's folded
/// convolutions on the blocked layout) are then compared with the tensors they were made
/// from at their first use in it only, not on every call. Nested scopes join the
/// outermost.
class SteadyWeights {
 public:
  SteadyWeights();
  ~SteadyWeights();
  SteadyWeights(const SteadyWeights&) = delete;
  SteadyWeights& operator=(const SteadyWeights&) = delete;

 private:
  bool outermost_;
};

}  // namespace patchwise
