#pragma once
// Heatmaps: what each patch position says about one class.
//
// The model's patch (its size, resized to its input) slides over every position of
// the image at stride S (TensorFlow's VALID rule: (H - ph) / S + 1 rows of positions,
// likewise columns); the backbone classifies each patch alone, and probs[r][c] is
// that patch's softmax probability of the target class (the model's fused
// prediction for the image, unless one is given). With grid_only, the positions are
// the model's own P patches. coverage[y][x] is the mean probability of the patches
// covering pixel (y, x) (NaN where none does), the map drawn over the image.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "patchwise/data/region.h"
#include "patchwise/model/patch_classifier.h"

namespace patchwise {

struct HeatmapOptions {
  int64_t stride = 2;         ///< step between patch positions, in pixels
  int64_t target_class = -1;  ///< -1: the model's prediction for the image
  bool grid_only = false;     ///< only the model's own patches
  int64_t batch = 256;        ///< patches per forward pass
};

struct Heatmap {
  int64_t target_class = 0;
  at::Tensor probs;             ///< float64 [rows, cols] (grid_only: [1, P])
  std::vector<PatchBox> boxes;  ///< one per position, row-major
  at::Tensor coverage;          ///< float64 [H, W]
};

/// image: uint8 [C,H,W] of the model's size. Throws InputError on a class outside
/// [0, K) or a stride outside [1, H].
Heatmap compute_heatmap(
    PatchClassifier& model, const at::Tensor& image, const HeatmapOptions& options);

/// A tiled model's map over a large image's thumbnail of thumb_h x thumb_w: each tile's
/// score (tiles at `boxes`, level-0 coordinates of a width x height image) divided by the
/// largest score, averaged where tiles overlap; NaN where no kept tile lies. probs holds
/// the scores as given, [1, n]. Throws InputError when the sizes disagree.
Heatmap tile_heatmap(
    const std::vector<Box>& boxes, const std::vector<double>& scores, int64_t width, int64_t height,
    int64_t thumb_h, int64_t thumb_w);

/// Crops of `side` pixels side by side with a gap, each with its score printed under it:
/// uint8 [3, side + 16, n * (side + gap)]. crops: uint8 [C, side, side] each.
at::Tensor render_crop_strip(
    const std::vector<at::Tensor>& crops, const std::vector<double>& scores);

/// The image (grayscale) with the coverage map as a colour overlay (viridis, 0..1),
/// enlarged `scale` times, a colour bar and a title line. uint8 [3, H', W'].
at::Tensor render_heatmap(
    const at::Tensor& image, const Heatmap& heatmap, const std::string& title, int64_t scale = 8);

/// A tiled model's evidence on one large image, as `patchwise heatmap` draws it.
struct TiledHeatmap {
  at::Tensor picture;  ///< uint8 [3,H,W]: the map over the thumbnail, a colour bar, crops
  /// class, label, score (its name), tiles, top_tiles: [{x, y, w, h, score}] (level 0)
  nlohmann::json summary;
  double low = 0, high = 0;  ///< the tiles' lowest and highest score
};

/// Each kept tile's attention weight (or probability of `target_class`, -1: the
/// predicted one) over the image's thumbnail of longer side `size`, a colour bar, and
/// the `top` best tiles' crops below. `model` is tiled and in eval mode; InputError
/// naming the image when it cannot be read.
TiledHeatmap draw_tiled_heatmap(
    PatchClassifier& model, const std::string& image, int64_t target_class, int64_t size,
    int64_t top);

}  // namespace patchwise
