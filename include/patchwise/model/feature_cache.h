#pragma once
// Feature caches: every kept tile's backbone features, computed once with a frozen
// backbone and stored per image, so that a fusion head (the attention and the
// backbone's classifier) trains on them for many epochs without running the backbone
// again, as CLAM trains on slides.
//
// A cache is a model file (model/model_file.h, with its checksum and bounded parsing):
// the frozen tiled model that computed the features, so that a head trained on them
// needs nothing else and the result predicts on images. Its "training" section holds
// {"feature_cache": {"format_version": 1, "files": [...], "splits": [...]}} (each
// image's file and split, "train" or "test", in order) and its state records hold
//   state/features  float32 [N,F]  every kept tile of every image, image after image
//   state/offsets   int64 [M+1]    image i's tiles are rows offsets[i] .. offsets[i+1]-1
//   state/labels    int64 [M]      each image's class
//   state/boxes     int64 [N,4]    each tile's x, y, w, h in level-0 pixels
// Loading checks the records against each other and against the model (F, classes).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "patchwise/data/dataset.h"
#include "patchwise/data/loader.h"
#include "patchwise/data/region.h"
#include "patchwise/model/patch_classifier.h"

namespace patchwise {

constexpr int kFeatureCacheVersion = 1;

struct FeatureCache {
  PatchClassifier model{nullptr};   ///< tiled, on the CPU: its backbone made the features
  std::vector<std::string> files;   ///< M images, in order
  std::vector<std::string> splits;  ///< each image's split: "train" or "test"
  at::Tensor labels;                ///< int64 [M]
  at::Tensor offsets;               ///< int64 [M+1], 0 first, N last, increasing
  at::Tensor features;              ///< float [N,F]
  at::Tensor boxes;                 ///< int64 [N,4]

  int64_t images() const { return static_cast<int64_t>(files.size()); }
  /// Image i's features [n,F], n >= 1 (a view).
  at::Tensor bag(int64_t i) const;
  /// The images of `split`, in order, as a set of files with labels (a tiled model's
  /// data set) named `source`; empty when the cache has none of that split.
  Dataset split(const std::string& split, const std::string& source) const;
  /// The bag function of `data` (a subset of split()s): item i's features are those of
  /// the cached image with its file. InputError for a file the cache lacks.
  BagFn bags(const Dataset& data) const;
};

/// A model to train on `cache`: `config` (the cache model's, with another fusion rule,
/// attention width or dropout) with the cache model's backbone feature layers, frozen
/// (freeze_features); the head (attention, classifier) fresh from the current seed.
PatchClassifier head_model(const FeatureCache& cache, const ModelConfig& config);

/// One set to cache: its split name and its images (a tiled model's data set: files
/// and labels).
using CacheSet = std::pair<std::string, const Dataset*>;

/// The features of every image of `sets` under `model` (a tiled model; its tile
/// options and input decide the bags), reading with `reader`. The next image is read
/// while the current one is computed; on_image(done, total) after each. Throws
/// InputError naming an image that cannot be read, or when the model is not tiled. Each
/// bag is counted in `tally` when one is given.
class FilterTally;  // patch/bags.h
FeatureCache compute_feature_cache(
    PatchClassifier& model, const std::vector<CacheSet>& sets, const RegionReaderOptions& reader,
    const std::function<void(int64_t, int64_t)>& on_image = {}, FilterTally* tally = nullptr);

/// Writes `cache` atomically to `path` (a model file, see above).
void save_feature_cache(const std::string& path, const FeatureCache& cache);

/// Reads and checks a cache; InputError naming the file for a model file without
/// features, a record that does not fit the others, or anything load_model refuses.
FeatureCache load_feature_cache(const std::string& path);

}  // namespace patchwise
