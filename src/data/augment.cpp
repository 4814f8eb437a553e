#include "patchwise/data/augment.h"

#include <torch/torch.h>

#include <cmath>

namespace patchwise {
namespace {

/// Random erasing of one image [C,H,W] in place (see augment.h).
void erase_one(at::Tensor image) {
  const int64_t h = image.size(1);
  const int64_t w = image.size(2);
  const double area = static_cast<double>(h * w);
  for (int attempt = 0; attempt < 10; ++attempt) {
    at::Tensor draw = torch::rand({4}, torch::kFloat64);
    const double* u = draw.data_ptr<double>();
    const double target = area * (0.02 + 0.31 * u[0]);
    const double aspect = std::exp(std::log(0.3) + (std::log(3.3) - std::log(0.3)) * u[1]);
    const auto eh = static_cast<int64_t>(std::lround(std::sqrt(target * aspect)));
    const auto ew = static_cast<int64_t>(std::lround(std::sqrt(target / aspect)));
    if (eh < 1 || ew < 1 || eh >= h || ew >= w) continue;
    const auto y = static_cast<int64_t>(u[2] * static_cast<double>(h - eh + 1)) % (h - eh + 1);
    const auto x = static_cast<int64_t>(u[3] * static_cast<double>(w - ew + 1)) % (w - ew + 1);
    at::Tensor patch = image.narrow(1, y, eh).narrow(2, x, ew);
    if (image.scalar_type() == torch::kUInt8) {
      patch.copy_(torch::randint(0, 256, patch.sizes(), torch::kUInt8));
    } else {
      patch.copy_(torch::rand(patch.sizes(), image.options()));
    }
    return;
  }
}

}  // namespace

at::Tensor augment_images(const at::Tensor& images, const AugmentOptions& options) {
  TORCH_CHECK(images.dim() == 4, "augment_images expects [B,C,H,W], got ", images.sizes());
  at::Tensor out = images;
  const int64_t batch = images.size(0);
  if (options.shift > 0) {
    const int64_t s = options.shift;
    const int64_t h = images.size(2);
    const int64_t w = images.size(3);
    at::Tensor padded = torch::constant_pad_nd(images, {s, s, s, s}, 0);
    at::Tensor offsets = torch::randint(0, 2 * s + 1, {batch, 2}, torch::kInt64);
    const int64_t* o = offsets.data_ptr<int64_t>();
    std::vector<at::Tensor> crops;
    crops.reserve(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      crops.push_back(padded[b].narrow(1, o[2 * b], h).narrow(2, o[2 * b + 1], w));
    }
    out = torch::stack(crops, 0);
  }
  if (options.flip) {
    at::Tensor mirror = (torch::rand({batch}) < 0.5).view({batch, 1, 1, 1}).to(out.device());
    out = torch::where(mirror, out.flip({3}), out);
  }
  out = out.contiguous();
  if (options.erase > 0) {
    if (out.is_same(images)) out = out.clone();  // the caller's batch stays as it was
    at::Tensor chosen = torch::rand({batch}, torch::kFloat64) < options.erase;
    for (int64_t b = 0; b < batch; ++b) {
      if (chosen[b].item<bool>()) erase_one(out[b]);
    }
  }
  return out;
}

}  // namespace patchwise
