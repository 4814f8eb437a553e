#include "patchwise/base/version.h"

#include <ATen/Version.h>
#include <dlfcn.h>
#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include "patchwise/base/cpu_allocator.h"

namespace patchwise {
namespace {

/// The first capture of `pattern` in LibTorch's build summary, or `fallback`.
std::string torch_config(const std::string& pattern, const std::string& fallback) {
  static const std::string config = at::show_config();
  std::smatch match;
  if (std::regex_search(config, match, std::regex(pattern))) return match[1];
  return fallback;
}

/// The shared library that provides `symbol` in this process, and OpenBLAS's own
/// description of itself when that is the one.
std::string blas_library() {
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info info{};
  std::string where = sgemm != nullptr && dladdr(sgemm, &info) != 0 && info.dli_fname != nullptr
                          ? info.dli_fname
                          : "not found";
  using ConfigFn = char* (*)();
  if (auto config = reinterpret_cast<ConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    where += fmt::format(" (OpenBLAS: {})", config());
  }
  return where;
}

/// "model name" of /proc/cpuinfo and which of the vector extensions that matter to
/// LibTorch's kernels its flags list.
std::string processor() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "unknown processor", flags;
  while (std::getline(in, line) && (model == "unknown processor" || flags.empty())) {
    auto value = [&] { return line.substr(line.find(':') + 2); };
    if (line.rfind("model name", 0) == 0) model = value();
    if (line.rfind("flags", 0) == 0) flags = " " + value() + " ";
  }
  std::vector<std::string> has;
  for (const char* f : {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}) {
    if (flags.find(fmt::format(" {} ", f)) != std::string::npos) has.emplace_back(f);
  }
  return fmt::format(
      "{}, {} logical cores; has {}",
      model,
      std::thread::hardware_concurrency(),
      has.empty() ? "none of avx2, avx512" : fmt::format("{}", fmt::join(has, " ")));
}

std::string cuda_line() {
  const std::string built = torch_config("USE_CUDA=(\\w+)", "unknown");
  if (built != "ON") return "CUDA: not built in";
  return fmt::format("CUDA: built in, {} device(s) visible", torch::cuda::device_count());
}

}  // namespace

std::string patchwise_version() { return PATCHWISE_VERSION; }

std::string version_report() {
  std::ostringstream out;
  out << "patchwise " << patchwise_version() << " (C++" << __cplusplus / 100 % 100 << ", "
      << "compiler " << __VERSION__ << ")\n";
  out << fmt::format(
      "LibTorch {} ({}; {}, parallel backend {}, oneDNN {})\n",
      TORCH_VERSION,
      torch_config("- (GCC [0-9.]+|clang [0-9.]+)", "compiler unknown"),
      torch_config("BUILD_TYPE=(\\w+)", "build type unknown"),
      torch_config("- (OpenMP|TBB|native)", "unknown"),
      torch_config("MKL-DNN (v[0-9.]+)", "absent"));
  out << cuda_line() << "\n";
  out << "BLAS: " << blas_library() << "\n";
  out << "CPU: " << processor() << "; LibTorch's kernels use "
      << torch_config("CPU capability usage: (\\w+)", "unknown") << "\n";
  out << fmt::format(
      "built against OpenCV {}, libvips {}, OpenSlide {}, cpp-httplib {}\n",
      PATCHWISE_OPENCV_VERSION,
      PATCHWISE_VIPS_VERSION,
      PATCHWISE_OPENSLIDE_VERSION,
      PATCHWISE_HTTPLIB_VERSION);
  out << "CPU allocator: " << cpu_allocator_description() << "\n";
  return out.str();
}

}  // namespace patchwise
