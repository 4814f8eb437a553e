#include "patchwise/base/precision.h"

#include <ATen/autocast_mode.h>

#include <fstream>
#include <sstream>

#include "patchwise/base/error.h"

namespace patchwise {

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::kFloat32;
  if (name == "bf16") return Precision::kBFloat16;
  throw OptionError("precision", "'" + name + "' is not a precision, expected fp32 or bf16");
}

const char* precision_name(Precision p) { return p == Precision::kBFloat16 ? "bf16" : "fp32"; }

bool cpu_has_native_bf16() {
  static const bool native = [] {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("flags", 0) != 0) continue;
      std::istringstream words(line);
      for (std::string w; words >> w;) {
        if (w == "avx512_bf16" || w == "amx_bf16") return true;
      }
      return false;
    }
    return false;
  }();
  return native;
}

// As Python's torch.autocast: the nesting count decides when the cache of weights cast
// to bfloat16 is cleared, so an optimizer step between two forward passes is never
// hidden behind a stale copy.
AutocastScope::AutocastScope(Precision p) : active_(p != Precision::kFloat32) {
  if (!active_) return;
  cpu_was_ = at::autocast::is_cpu_enabled();
  cuda_was_ = at::autocast::is_enabled();
  cpu_dtype_was_ = static_cast<int>(at::autocast::get_autocast_cpu_dtype());
  cuda_dtype_was_ = static_cast<int>(at::autocast::get_autocast_gpu_dtype());
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
  at::autocast::set_cpu_enabled(true);
  at::autocast::set_enabled(true);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_enabled(cuda_was_);
  at::autocast::set_cpu_enabled(cpu_was_);
  at::autocast::set_autocast_gpu_dtype(static_cast<at::ScalarType>(cuda_dtype_was_));
  at::autocast::set_autocast_cpu_dtype(static_cast<at::ScalarType>(cpu_dtype_was_));
}

}  // namespace patchwise
