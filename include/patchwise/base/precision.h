#pragma once
// The arithmetic a model's backbone runs in. float32 everywhere by default; bfloat16
// runs the backbone's convolutions and matrix products under LibTorch's autocast (CPU:
// bfloat16; CUDA: bfloat16), with its weights, batch-norm statistics, the fusion, the
// loss and the optimizer in float32.

#include <string>

namespace patchwise {

enum class Precision { kFloat32, kBFloat16 };

/// "fp32" or "bf16"; throws OptionError("precision", ...) for anything else.
Precision parse_precision(const std::string& name);
const char* precision_name(Precision p);

/// Whether this processor computes bfloat16 dot products natively (AVX-512 BF16 or
/// AMX-BF16). Without it LibTorch converts to float32 around every product: correct,
/// but slower than float32.
bool cpu_has_native_bf16();

/// Enables autocast at `p` for this thread's CPU and CUDA work while alive and restores
/// the previous state after; kFloat32 leaves it as it is.
class AutocastScope {
 public:
  explicit AutocastScope(Precision p);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  bool cpu_was_ = false;
  bool cuda_was_ = false;
  int cpu_dtype_was_ = 0;
  int cuda_dtype_was_ = 0;
};

}  // namespace patchwise
