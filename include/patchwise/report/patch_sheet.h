#pragma once
// The patch picture (the seed's figure): on the left the image with every patch
// outlined, on the right the patches as the backbone sees them (cut and resized
// to the input size), laid out as the grid's rows and columns, each enlarged so
// it can be seen, with thin borders.

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "patchwise/patch/grid.h"

namespace patchwise {

struct PatchSheetOptions {
  int64_t cell = 128;  ///< side of each patch in the sheet, in pixels
  int64_t border = 2;  ///< border and gap width, in pixels
};

/// image: uint8 [C,H,W] of the grid's image size. Returns uint8 [3,H',W'].
at::Tensor render_patch_sheet(
    const at::Tensor& image, const PatchGrid& grid, const PatchSheetOptions& options = {});

}  // namespace patchwise
