#include "patchwise/base/runtime.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <torch/torch.h>

#include <cstdlib>
#include <mutex>
#include <set>
#include <thread>

#include "patchwise/base/error.h"

namespace patchwise {

c10::Device resolve_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::kCUDA : torch::kCPU;
  if (name == "cpu") return torch::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    check_option(
        torch::cuda::is_available(),
        "device",
        "'{}' requested, but this LibTorch has no CUDA or no GPU is present; expected cpu",
        name);
    try {
      return c10::Device(name);
    } catch (const c10::Error&) {
      throw OptionError(
          "device", fmt::format("'{}' is not a device, expected cuda or cuda:N", name));
    }
  }
  throw OptionError("device", fmt::format("unknown device '{}', expected auto, cpu or cuda", name));
}

namespace {

/// OMP_NUM_THREADS when it holds a count from 1 to 1,024 (as OpenMP reads it), else 0.
int64_t threads_from_environment() {
  const char* value = std::getenv("OMP_NUM_THREADS");
  if (value == nullptr) return 0;
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  return end != value && *end == '\0' && n >= 1 && n <= 1024 ? n : 0;
}

}  // namespace

int64_t set_threads(int64_t n) {
  if (n <= 0) n = threads_from_environment();
  if (n <= 0) n = std::max<int64_t>(1, std::thread::hardware_concurrency());
  torch::set_num_threads(static_cast<int>(n));
  // LibTorch's OpenMP pool does the parallel work (oneDNN, the patch batch); OpenBLAS,
  // which only sees the small products of the dense heads and of the one-channel
  // first convolution (called per image from that pool), would otherwise keep a
  // second pool of threads spinning on the same cores.
  using SetBlasThreads = void (*)(int);
  if (auto set_blas =
          reinterpret_cast<SetBlasThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    set_blas(1);
  }
  return n;
}

int64_t kernel_threads_used() {
  std::mutex mutex;
  std::set<std::thread::id> ids;
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mutex);
    ids.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(ids.size());
}

}  // namespace patchwise
