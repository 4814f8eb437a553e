#pragma once
// What builds a backbone (models/backbone.h), apart from the networks themselves: a
// header light enough for every place that only carries the options.

#include <cstdint>
#include <string>

namespace patchwise {

struct BackboneOptions {
  std::string name = "small-cnn";  ///< a registered name (models/registry.h)
  int64_t in_channels = 1;         ///< 1 (grayscale) or 3 (colour)
  int64_t num_classes = 10;        ///< K, the number of logits
  int64_t input = 32;              ///< side s of the square input
  bool batch_norm = false;         ///< batch normalization after every convolution
  double dropout = 0.5;            ///< dropout before the last dense layer (small-cnn)
};

}  // namespace patchwise
