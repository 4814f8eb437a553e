#pragma once
// The tile picture users check before training on large images: the image's
// thumbnail with the foreground mask shaded blue, every kept tile outlined in green and
// every rejected tile in red (filled translucently instead when tiles are under 16
// pixels wide in the picture, where outlines would hide it), and a legend line.

#include <ATen/core/Tensor.h>

#include <nlohmann/json.hpp>

#include "patchwise/data/region.h"
#include "patchwise/patch/tiles.h"

namespace patchwise {

/// thumbnail: uint8 [C,h,w] of the whole image (e.g. plan.mask.thumbnail); the plan's
/// boxes are drawn scaled to it from the image's `width` x `height` at level 0.
/// Returns uint8 [3,h',w'].
at::Tensor render_tile_sheet(
    const at::Tensor& thumbnail, const TilePlan& plan, int64_t width, int64_t height);

/// The image as `patchwise tiles --json` lists it: path, format, size, channels, the
/// pyramid's levels, microns per pixel (null when unknown).
nlohmann::json describe_region_image(const RegionReader& reader);

/// The plan as `patchwise tiles --json` lists it: level, tile, stride, counts, the mask's
/// threshold; with `with_boxes` every box with its foreground fraction and whether it was
/// kept (a 40,000^2 slide has 24,336 of them).
nlohmann::json describe_tile_plan(const TilePlan& plan, double min_foreground, bool with_boxes);

}  // namespace patchwise
