#pragma once
// A small grid model of seeded random weights for tests that need a model but not a
// trained one: small-cnn on 28x28 grey images, 2x2 patches of 18, mean fusion.

#include <torch/torch.h>

#include <string>
#include <vector>

#include "patchwise/model/patch_classifier.h"

namespace patchwise::test {

/// The seed model's configuration: small-cnn on 28x28 grey images, a 2x2 grid of 18x18
/// patches at stride 10 resized to 32x32 (the defaults), mean fusion, these classes.
inline ModelConfig seed_config(std::vector<std::string> classes = {"a", "b", "c"}) {
  ModelConfig c;
  c.backbone.num_classes = static_cast<int64_t>(classes.size());
  c.class_names = std::move(classes);
  c.normalization = {{0.3}, {0.2}};
  return c;
}

inline PatchClassifier random_grid_model(
    std::vector<std::string> classes = {"a", "b", "c"}, uint64_t seed = 0) {
  torch::manual_seed(seed);
  PatchClassifier model(seed_config(std::move(classes)));
  model->eval();
  return model;
}

/// Four classes of grey images, `backbone` with `fusion` (attention 8 wide): the
/// configurations the PyTorch round trips compare.
inline ModelConfig gray_config(const std::string& backbone, FusionRule fusion) {
  ModelConfig c;
  c.class_names = {"a", "b", "c", "d"};
  c.backbone.num_classes = 4;
  c.backbone.name = backbone;
  c.normalization = {{0.3}, {0.2}};
  c.fusion = fusion;
  c.attention_hidden = 8;
  return c;
}

}  // namespace patchwise::test
