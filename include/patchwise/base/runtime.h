#pragma once
// Process-wide execution settings: device and threads.

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace patchwise {

/// "auto" (CUDA when LibTorch has it and a GPU is present, else CPU), "cpu", "cuda"
/// or "cuda:N". Throws InputError on an unknown name or CUDA without a GPU.
c10::Device resolve_device(const std::string& name);

/// LibTorch intra-op threads; n <= 0 means OMP_NUM_THREADS where it is set, else one per core
/// (LibTorch's own default is half).
/// Returns the number set.
int64_t set_threads(int64_t n);

/// How many threads one at::parallel_for of 1,024 items ran on when called from
/// patchwise's kernel files (src/models): with LibTorch's OpenMP backend they must be
/// compiled with -fopenmp, else the pragma is dropped and every kernel runs on one.
int64_t kernel_threads_used();

}  // namespace patchwise
