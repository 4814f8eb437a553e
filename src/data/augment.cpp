#include "patchwise/data/augment.h"

#include <torch/torch.h>

namespace patchwise {

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
  return out.contiguous();
}

}  // namespace patchwise
