#pragma once
// Training-time augmentation, applied to whole images before the patches are cut.
//   shift S: each image moves by (dy, dx), each uniform in [-S, S], the uncovered border
//            filled with zeros (pad by S, then crop H x W at a random offset)
//   flip   : each image is mirrored left-right with probability 1/2
// Labels are untouched. Random draws come from LibTorch's global generator, so a
// seeded run is reproducible.

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace patchwise {

struct AugmentOptions {
  int64_t shift = 0;  ///< maximum shift in pixels; 0: none
  bool flip = false;  ///< random horizontal flips

  bool enabled() const { return shift > 0 || flip; }
};

/// uint8 or float [B,C,H,W] -> the same shape and type, augmented.
at::Tensor augment_images(const at::Tensor& images, const AugmentOptions& options);

}  // namespace patchwise
