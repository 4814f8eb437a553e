#include "patchwise/model/bag_options.h"

namespace patchwise {

BagOptions model_bag_options(const ModelConfig& config, const RegionReaderOptions& reader) {
  return {config.tiles, reader, config.grid.input, config.image_channels};
}

}  // namespace patchwise
