#pragma once
// A synthetic "slide" of known content for the large-image tests: a white 2048x1536
// RGB background with two squares of saturated, textured colour:
//   A: x 256..768,  y 256..768   (exactly tiles (1,1), (2,1), (1,2), (2,2) of 256)
//   B: x 1280..1664, y 768..1152 (all of tile (5,3), half of (6,3) and (5,4), a
//                                 quarter of (6,4))

#include <torch/torch.h>

namespace patchwise::test {

inline at::Tensor synthetic_slide() {
  at::Tensor image = torch::full({3, 1536, 2048}, 255, torch::kUInt8);
  auto paint = [&](int64_t x, int64_t y, int64_t w, int64_t h, int r, int g, int b) {
    at::Tensor noise = torch::randint(-40, 40, {3, h, w}, torch::kInt32);
    at::Tensor base = torch::tensor({r, g, b}, torch::kInt32).view({3, 1, 1});
    image.narrow(1, y, h).narrow(2, x, w).copy_((base + noise).clamp(0, 255).to(torch::kUInt8));
  };
  paint(256, 256, 512, 512, 200, 60, 150);  // purple-pink, like eosin
  paint(1280, 768, 384, 384, 70, 60, 180);  // blue, like haematoxylin
  return image;
}

}  // namespace patchwise::test
