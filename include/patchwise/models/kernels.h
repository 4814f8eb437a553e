#pragma once
// Which kernels the residual backbones run with on the CPU (the train flag --kernels;
// evaluation follows the process-wide choice, auto unless set).
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
// aten: LibTorch's kernels always (channels-last convolutions through LibTorch's oneDNN
//   calls, its batch norm).
// Both compute the same function; Winograd rounds differently (docs/performance.md).

#include <string>

namespace patchwise {

enum class TrainKernels { kAuto, kAten };

/// "auto" or "aten"; throws OptionError("kernels", ...) on another name.
TrainKernels parse_train_kernels(const std::string& name);
const char* train_kernels_name(TrainKernels k);

/// The process-wide choice (default kAuto).
void set_train_kernels(TrainKernels k);
TrainKernels train_kernels();

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
