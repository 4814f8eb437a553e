#pragma once
// Training-time augmentation, applied to whole images before the patches are cut.
//   shift S: each image moves by (dy, dx), each uniform in [-S, S], the uncovered border
//            filled with zeros (pad by S, then crop H x W at a random offset)
//   flip   : each image is mirrored left-right with probability 1/2
//   erase P: with probability P a rectangle of each image (2 % to 33 % of its area,
//            aspect ratio 0.3 to 3.3, up to 10 tries to fit) is filled with uniform
//            noise (Zhong et al.'s random erasing, as torchvision's RandomErasing with
//            value='random'); after shift and flip
// Labels are untouched. Random draws come from LibTorch's global generator, so a
// seeded run is reproducible.

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace patchwise {

struct AugmentOptions {
  int64_t shift = 0;  ///< maximum shift in pixels; 0: none
  bool flip = false;  ///< random horizontal flips
  double erase = 0;   ///< probability of random erasing; 0: none

  bool enabled() const { return shift > 0 || flip || erase > 0; }
};

/// uint8 or float [B,C,H,W] -> the same shape and type, augmented.
at::Tensor augment_images(const at::Tensor& images, const AugmentOptions& options);

}  // namespace patchwise
