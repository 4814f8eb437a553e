// oneDNN called directly on blocked activations, for training the residual backbones
// (blocked_conv.cpp, blocked_norm.cpp) and for evaluation (blocked_eval.cpp); here the
// choice of kernels (models/kernels.h). Why the blocked layout and when Winograd:
// LibTorch 1.13 reaches oneDNN only through its own convolution, which takes NCHW or
// channels-last tensors and lets oneDNN pick the direct algorithm; its Winograd kernels
// (jit_wino_4x3, AVX-512) need nChw16c on both sides. They compute 4x4 output tiles, so
// their cost follows the tiles while the direct kernel's follows the outputs. Measured on
// 2 cores of a Xeon (family 6, model 167), forward + both backward passes, Winograd's time
// over the direct kernel's, by channels and side (tile efficiency: outputs over tiled
// outputs): 32 at 16x16 0.74 and at 12x12 0.70 (1.0), at 14x14 0.90 (0.77), at 9x9 1.23
// (0.56); 64 at 8x8 0.57 (1.0), at 7x7 0.67 (0.77), at 6x6 0.90 and at 5x5 1.44 (0.56,
// 0.39); 16 at 32x32 1.36 and at 18x18 1.74. Hence Winograd from 32 channels where at
// least 3/4 of the tiled outputs are real.
//
// Without AVX-512 (oneDNN's AVX2 kernels: nChw8c, no Winograd) the blocked layout still
// saves the reorders and fuses batch norm with ReLU: with oneDNN and ATen held to AVX2 on
// the same Xeon (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2), a ResNet-20 training
// step ran at 158 against 142 images/s on LibTorch's kernels.

#include "blocked.h"

#include <ATen/autocast_mode.h>

#include <atomic>
#include <string>

#include "blocked_dnnl.h"
#include "patchwise/base/error.h"
#include "patchwise/models/kernels.h"

namespace patchwise {

namespace {
std::atomic<CpuKernels> g_cpu_kernels{CpuKernels::kAuto};
}  // namespace

CpuKernels parse_cpu_kernels(const std::string& name) {
  if (name == "auto") return CpuKernels::kAuto;
  if (name == "aten") return CpuKernels::kAten;
  throw OptionError("kernels", "'" + name + "' is not a kernel choice, expected auto or aten");
}

const char* cpu_kernels_name(CpuKernels k) { return k == CpuKernels::kAten ? "aten" : "auto"; }

void set_cpu_kernels(CpuKernels k) { g_cpu_kernels = k; }

CpuKernels cpu_kernels() { return g_cpu_kernels; }

namespace detail::blocked {

bool use_for(const at::Tensor& x) {
  return cpu_kernels() == CpuKernels::kAuto && x.device().is_cpu() &&
         x.scalar_type() == at::kFloat && !at::autocast::is_cpu_enabled() && block_size() > 0;
}

bool winograd_for(int64_t channels, int64_t height, int64_t width) {
  return channels >= kWinogradMin && tiles_well(height, width) && winograd_available();
}

at::Tensor mean_pool(const at::Tensor& xb) {
  return xb.mean({2, 3}).reshape({xb.size(0), xb.size(1) * xb.size(4)});
}

at::Tensor from_blocked(const at::Tensor& xb) {
  return xb.permute({0, 1, 4, 2, 3})
      .reshape({xb.size(0), xb.size(1) * xb.size(4), xb.size(2), xb.size(3)});
}

}  // namespace detail::blocked
}  // namespace patchwise
