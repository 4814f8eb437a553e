#pragma once
// Bags: a large image as the tiles its background filter keeps (patch/tiles.h), each
// read at its level and resized to the backbone's input. A tiled model trains and
// predicts on bags (model/patch_classifier.h, forward_bags).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "patchwise/data/dataset.h"
#include "patchwise/data/region.h"
#include "patchwise/patch/tiles.h"

namespace patchwise {

struct BagOptions {
  TileOptions tiles;
  RegionReaderOptions reader;
  int64_t input = 32;    ///< side each tile is resized to
  int64_t channels = 0;  ///< the model's; an image with other channels is refused (0: any)
};

struct Bag {
  at::Tensor tiles;        ///< uint8 [n,C,input,input], n >= 1, in lattice order
  std::vector<Box> boxes;  ///< each tile's box in level-0 coordinates
  int level = 0;           ///< the level the tiles were read at
  bool sparse = false;     ///< no tile reached min_foreground: those with any were kept
  bool fallback = false;   ///< no tile has any foreground: all were kept (TilePlan)
  int64_t lattice = 0;     ///< tiles in the lattice before the filter
};

/// How the background filter fared over a data set's bags, counted as they are read (each
/// image once, from any thread), so that a command says once when it kept only tiles of
/// sparse content or every tile (a filter that silently keeps all 144 tiles of which 8
/// hold the object is a model that learns nothing).
class FilterTally {
 public:
  void add(int64_t item, const Bag& bag);
  /// One line with the counts, or "" when every image counted had a tile pass the filter.
  std::string notice(double min_foreground) const;
  /// Prints notice() to stderr after "command: " the first time it is not empty.
  void say_once(const std::string& command, double min_foreground);

 private:
  mutable std::mutex mutex_;
  std::set<int64_t> seen_;
  int64_t sparse_ = 0, fallback_ = 0;
  int64_t sparse_kept_ = 0, sparse_lattice_ = 0, fallback_tiles_ = 0;
  bool said_ = false;
};

/// The bag of the image at `path`. Uses no parallel LibTorch operator: safe on a
/// loader thread. Throws InputError naming the file when it cannot be read, is
/// smaller than a tile, or has channels other than options.channels.
Bag read_bag(const std::string& path, const BagOptions& options);
/// The same from an image already open (options.reader is not used).
Bag read_bag(const RegionReader& reader, const BagOptions& options);

/// A Loader's bag reader over data.files.paths: item i's tiles. Bags are kept in
/// memory once read, up to `cache_bytes` in all (0: none kept), so that later epochs
/// skip decoding; the reader may be called from one thread at a time. Each bag read is
/// counted in `tally` when one is given.
std::function<at::Tensor(int64_t)> bag_reader(
    const Dataset& data, const BagOptions& options, int64_t cache_bytes,
    std::shared_ptr<FilterTally> tally = nullptr);

/// The mean and standard deviation of each channel over the tiles of the first
/// `images` images of `data` (a tiled model's input normalization).
Normalization tile_normalization(const Dataset& data, const BagOptions& options, int64_t images);

/// Bags laid out for fusion (fusion/fusion.h) and attention: rows padded to the largest bag, and
/// their mask.
struct PaddedBags {
  at::Tensor values;  ///< [B,P,...], zeros past each bag's end
  at::Tensor mask;    ///< bool [B,P]; undefined when every bag has P rows (no padding)
};

/// `flat` [N,...] holds B bags one after the other, counts[b] >= 1 rows each (sum N) ->
/// PaddedBags. Equal bags give a view of `flat` and no mask: the fixed grid's layout.
/// Differentiable with respect to `flat`.
PaddedBags pad_bags(const at::Tensor& flat, const std::vector<int64_t>& counts);

}  // namespace patchwise
