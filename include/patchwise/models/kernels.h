#pragma once
// Which kernels the residual backbones train with on the CPU.
//
// auto: where oneDNN has its Winograd convolutions (processors with AVX-512), a training
//   pass keeps the activations in oneDNN's blocked layout (nChw16c) from the stem to the
//   pooling and calls oneDNN directly: Winograd F(4x4, 3x3) for the 3x3 stride-1
//   convolutions of 32 channels and more, its direct kernels for the others, its batch
//   norm with the ReLU fused. Elsewhere, and in evaluation, LibTorch's kernels.
// aten: LibTorch's kernels always (channels-last convolutions through LibTorch's oneDNN
//   calls, its batch norm).
// Both compute the same function; Winograd rounds differently (README, Performance).

#include <string>

namespace patchwise {

enum class TrainKernels { kAuto, kAten };

/// "auto" or "aten"; throws OptionError("kernels", ...) on another name.
TrainKernels parse_train_kernels(const std::string& name);
const char* train_kernels_name(TrainKernels k);

/// The process-wide choice (default kAuto).
void set_train_kernels(TrainKernels k);
TrainKernels train_kernels();

/// Whether this processor's oneDNN offers Winograd convolutions (the condition of auto).
bool winograd_available();

}  // namespace patchwise
