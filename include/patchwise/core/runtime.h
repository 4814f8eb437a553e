#pragma once
// Process-wide execution settings: device and threads.

#include <cstdint>
#include <string>

#include <c10/core/Device.h>

namespace patchwise {

/// "auto" (CUDA when LibTorch has it and a GPU is present, else CPU), "cpu", "cuda"
/// or "cuda:N". Throws InputError on an unknown name or CUDA without a GPU.
c10::Device resolve_device(const std::string& name);

/// LibTorch intra-op threads; n <= 0 means one per core (LibTorch's own default is half).
/// Returns the number set.
int64_t set_threads(int64_t n);

}  // namespace patchwise
