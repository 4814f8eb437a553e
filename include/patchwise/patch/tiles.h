#pragma once
// Tiles of a large image: a lattice of square tiles at one pyramid level, and the
// background filter that keeps the tiles holding enough foreground.
//
// Lattice, per axis (x shown; y is the same with the height): tiles of T pixels of
// the chosen level at offsets 0, S, 2S, ... while x + T <= W (TensorFlow's VALID
// rule, as the patch grid's stride): tiles never cross the border, the last
// W - T - floor((W - T) / S) * S pixels of a row are not covered. Row-major order.
// Boxes come from the level's size alone: no pixel is read.
//
// Level: --level L, or the level whose microns per pixel are nearest to --mpp X (the
// file must state its resolution), or level 0.
//
// Foreground mask (computed on a thumbnail whose side gives about 8 mask pixels per
// tile, between 256 and 4096, or of the side mask_side asks for):
//   colour images: Otsu's threshold on the HSV saturation; saturated is foreground
//                  (stained tissue against a white or grey background)
//   grey images, and colour images whose saturation spans fewer than 16 levels:
//                  Otsu's threshold on the intensity; the side that holds most of the
//                  thumbnail's border pixels is the background (so white slides and
//                  black canvases both work)
//   clean-up    :  a closing then an opening with a 3x3 ellipse (fills pinholes,
//                  drops specks); off with cleanup = false, for sparse thin strokes
//                  (handwriting, line drawings) that an opening would erase
// A tile's foreground fraction is the mean of the mask over the tile's box; tiles
// with a fraction >= min_foreground are kept. When no tile reaches it (sparse content:
// small objects on a large canvas), the tiles with any foreground are kept and
// TilePlan::sparse says so; when no tile has any, every tile is kept and
// TilePlan::fallback says so (a bag is never silently empty).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "patchwise/data/region.h"

namespace patchwise {

struct TileOptions {
  int64_t tile = 256;            ///< tile side in pixels of the chosen level
  int64_t stride = 0;            ///< 0: the tile side (tiles side by side)
  int level = -1;                ///< -1: from mpp, else level 0
  double mpp = 0;                ///< > 0: the level nearest to this many microns per pixel
  double min_foreground = 0.25;  ///< keep tiles with at least this foreground fraction;
                                 ///< 0: keep every tile (no mask is computed)
  int64_t mask_side = 0;         ///< longer side of the mask's thumbnail; 0: automatic
  bool cleanup = true;           ///< the mask's closing and opening
};

/// Throws OptionError when `options` cannot describe tiles (a tile below 1, a negative
/// stride, level or mpp, a foreground fraction outside [0, 1], a mask side outside
/// 0 or 16..16384).
void check_tile_options(const TileOptions& options);

/// The offsets 0, stride, ... of tiles of `tile` along a side of `size` (VALID rule).
std::vector<int64_t> tile_offsets(int64_t size, int64_t tile, int64_t stride);

/// Every tile box of a `width` x `height` level, row-major. Throws InputError when the
/// tile is larger than the level or the sizes are not positive.
std::vector<Box> tile_lattice(int64_t width, int64_t height, int64_t tile, int64_t stride);

/// The level `options` asks for; throws InputError naming the image when it lacks it.
int choose_level(const RegionReader& reader, const TileOptions& options);

struct ForegroundMask {
  at::Tensor mask;              ///< uint8 [h,w], 1 = foreground, over the whole image
  at::Tensor thumbnail;         ///< uint8 [C,h,w], the image it was computed from
  int threshold = 0;            ///< Otsu's threshold on `channel`
  std::string channel;          ///< "saturation" or "intensity"
  bool foreground_high = true;  ///< whether values above the threshold are foreground
};

/// The foreground mask of `reader`'s image on a thumbnail of `max_side`.
ForegroundMask foreground_mask(const RegionReader& reader, int64_t max_side, bool cleanup = true);

/// The thumbnail side the background filter uses for tiles of `tile` pixels at a level
/// of `downsample`: about 8 mask pixels per tile, between 256 and 4096.
int64_t mask_side(const RegionReader& reader, int64_t tile, double downsample);

struct TilePlan {
  int level = 0;
  double downsample = 1;  ///< of that level
  int64_t tile = 0;
  int64_t stride = 0;
  std::vector<Box> boxes;         ///< every tile of the lattice, in level coordinates
  std::vector<float> foreground;  ///< per box: its foreground fraction (1 without a mask)
  std::vector<int64_t> kept;      ///< indices of the boxes kept, in lattice order
  bool sparse = false;    ///< no box reached min_foreground: those with any foreground are kept
  bool fallback = false;  ///< no box has any foreground: all are kept
  ForegroundMask mask;    ///< undefined tensors when min_foreground is 0
};

/// The lattice at the chosen level and the background filter over it.
TilePlan plan_tiles(const RegionReader& reader, const TileOptions& options);

/// `box` of `level` as the level-0 box it covers.
Box level0_box(const Box& box, double downsample);

}  // namespace patchwise
