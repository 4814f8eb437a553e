#pragma once
// How a tiled model's images become bags of tiles: the model's tile lattice, input side
// and channels, as train, eval, predict, heatmap and serve read them.

#include "patchwise/data/region.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/patch/bags.h"

namespace patchwise {

/// The bag options of a tiled model's configuration; `reader` opens the images.
BagOptions model_bag_options(const ModelConfig& config, const RegionReaderOptions& reader = {});

}  // namespace patchwise
