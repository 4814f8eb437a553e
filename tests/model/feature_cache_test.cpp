// Feature caches: the features are the backbone's, they survive the file, the file is
// checked, and a head trained on them learns while the backbone stays as it was.

#include "patchwise/model/feature_cache.h"

#include <gmock/gmock.h>

#include "patchwise/data/image.h"
#include "patchwise/model/model_file.h"
#include "patchwise/models/backbone.h"
#include "patchwise/patch/bags.h"
#include "patchwise/train/trainer.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kInput = 24;

ModelConfig tiled_config(FusionRule rule) {
  ModelConfig c;
  c.tiled = true;
  c.image_h = c.image_w = c.grid.input = kInput;
  c.grid.rows = c.grid.cols = 1;
  c.grid.patch_h = c.grid.patch_w = kInput;
  c.backbone.num_classes = 2;
  c.class_names = {"dark", "bright"};
  c.normalization = {{0.3}, {0.3}};
  c.tiles.tile = 32;
  c.tiles.min_foreground = 0;  // every tile of the 3x3 lattice
  c.fusion = rule;
  return c;
}

class FeatureCacheTest : public test::SeededTest {
 protected:
  /// `n` grayscale 96x96 images of noise; label 1 has one bright square in tile i % 9.
  Dataset write_images(const std::string& split, int64_t n) {
    Dataset d;
    std::vector<int64_t> labels;
    std::filesystem::create_directories(dir_ / split);
    for (int64_t i = 0; i < n; ++i) {
      at::Tensor image = torch::randint(0, 80, {1, 96, 96}, torch::kUInt8);
      const int64_t label = i % 2;
      if (label == 1) {
        image.narrow(1, 32 * (i % 3) + 8, 16).narrow(2, 32 * (i % 9 / 3) + 8, 16).fill_(250);
      }
      const std::string file = path(split + "/" + std::to_string(i) + ".png");
      write_image(file, image);
      d.files.paths.push_back(file);
      labels.push_back(label);
    }
    d.labels = torch::tensor(labels, torch::kInt64);
    d.class_names = {"dark", "bright"};
    d.files.channels = 1;
    d.source = split;
    return d;
  }
};

TEST_F(FeatureCacheTest, HoldsEachImagesTileFeaturesAndSurvivesItsFile) {
  PatchClassifier model(tiled_config(FusionRule::kGatedAttention));
  model->eval();
  const Dataset train = write_images("train", 4);
  const Dataset test = write_images("test", 3);
  FeatureCache cache = compute_feature_cache(model, {{"train", &train}, {"test", &test}}, {});
  ASSERT_EQ(cache.images(), 7);
  EXPECT_EQ(cache.features.sizes(), (std::vector<int64_t>{63, 64}));
  const BagOptions options{model->config().tiles, {}, kInput, 1};
  torch::NoGradGuard no_grad;
  for (int64_t i = 0; i < 7; ++i) {
    const Bag bag = read_bag(cache.files[static_cast<size_t>(i)], options);
    // compute_feature_cache ran these same 9 tiles through tile_features in evaluation
    // mode without gradients, as here: the same operations, equal bit for bit, so any
    // bound above 0 holds.
    EXPECT_TRUE(torch::allclose(cache.bag(i), model->tile_features(bag.tiles), 1e-5, 1e-5));
    EXPECT_EQ(cache.boxes[i * 9 + 4][0].item<int64_t>(), bag.boxes[4].x);
  }
  save_feature_cache(path("f.pwf"), cache);
  FeatureCache back = load_feature_cache(path("f.pwf"));
  // The file keeps every bit.
  EXPECT_TRUE(torch::equal(back.features, cache.features));
  EXPECT_TRUE(torch::equal(back.offsets, cache.offsets));
  EXPECT_TRUE(torch::equal(back.boxes, cache.boxes));
  EXPECT_TRUE(torch::equal(back.labels, torch::tensor({0, 1, 0, 1, 0, 1, 0}, torch::kInt64)));
  EXPECT_EQ(back.files, cache.files);
  EXPECT_EQ(back.split("test", "t").files.paths, test.files.paths);
  // Features through the head give what tiles through the whole model give.
  const Bag bag = read_bag(test.files.paths[1], options);
  const at::Tensor from_tiles = model->forward_bags(bag.tiles, {9}).log_probs;
  const at::Tensor from_features = back.model->forward_bags(back.bag(5), {9}).log_probs;
  // The same head on bitwise the same features (above) and weights (the file keeps every
  // bit): the same operations, equal bit for bit, so any bound above 0 holds.
  EXPECT_TRUE(torch::allclose(from_tiles, from_features, 1e-5, 1e-5));
}

TEST_F(FeatureCacheTest, AHeadTrainsOnTheCacheWhileTheBackboneStaysFrozen) {
  PatchClassifier model(tiled_config(FusionRule::kMean));
  const Dataset train = write_images("train", 16);
  FeatureCache cache = compute_feature_cache(model, {{"train", &train}}, {});
  ModelConfig config = tiled_config(FusionRule::kGatedAttention);
  PatchClassifier head = head_model(cache, config);
  const auto before = model->backbone().named_parameters();
  std::map<std::string, at::Tensor> start;
  for (const auto& p : head->named_parameters()) start[p.key()] = p.value().clone();
  auto frozen = [](const std::string& key) {
    return key.rfind("backbone.", 0) == 0 && key.find("fc2") == std::string::npos;
  };
  // Only the attention and the classifier learn.
  size_t head_count = 0;
  for (const auto& p : head->named_parameters()) head_count += frozen(p.key()) ? 0 : 1;
  EXPECT_EQ(head->trainable_parameters().size(), head_count);
  EXPECT_GE(head_count, 4u);
  TrainerOptions options;
  options.epochs = 3;
  options.batch = 4;
  options.loss = LossKind::kFused;
  options.bags = cache.bags(cache.split("train", "train"));
  train_model(head, cache.split("train", "train"), nullptr, options);
  for (const auto& p : head->named_parameters()) {
    // Frozen weights are copies no step touches (exact); trained ones move far beyond rounding.
    if (frozen(p.key())) {
      EXPECT_TRUE(torch::equal(p.value(), before[p.key().substr(9)])) << p.key();
    } else {
      EXPECT_FALSE(torch::equal(p.value(), start[p.key()])) << p.key();
    }
  }
}

TEST_F(FeatureCacheTest, RefusesAFileThatIsNotACacheOrDoesNotAddUp) {
  PatchClassifier model(tiled_config(FusionRule::kMean));
  save_model(path("plain.pw"), model, nlohmann::json::object());
  EXPECT_THAT(
      test::input_error([&] { load_feature_cache(path("plain.pw")); }),
      HasSubstr("plain.pw: a model file without features, expected a feature cache"));
  const Dataset train = write_images("train", 2);
  FeatureCache cache = compute_feature_cache(model, {{"train", &train}}, {});
  FeatureCache bad = cache;
  bad.offsets = torch::tensor({0, 9, 20}, torch::kInt64);  // 20 rows of 18
  save_feature_cache(path("bad.pwf"), bad);
  EXPECT_THAT(
      test::input_error([&] { load_feature_cache(path("bad.pwf")); }),
      HasSubstr("bad.pwf: feature cache offsets run from 0 to 20, expected 0 to the 18 "));
  bad.offsets = torch::tensor({0, 9, 9, 18}, torch::kInt64);
  bad.files.push_back("x.png");
  bad.splits.push_back("train");
  bad.labels = torch::tensor({0, 1, 0}, torch::kInt64);
  save_feature_cache(path("empty.pwf"), bad);
  EXPECT_THAT(
      test::input_error([&] { load_feature_cache(path("empty.pwf")); }),
      HasSubstr("empty.pwf: feature cache image 1 has 0 tiles, expected at least 1"));
  save_feature_cache(path("ok.pwf"), cache);
  std::string bytes = test::read_file(path("ok.pwf"));
  bytes[bytes.size() / 2] ^= 0x40;
  std::ofstream(path("corrupt.pwf"), std::ios::binary) << bytes;
  EXPECT_THAT(
      test::input_error([&] { load_feature_cache(path("corrupt.pwf")); }),
      HasSubstr("corrupt.pwf: checksum mismatch"));
  Dataset other = train;
  other.files.paths[1] = "elsewhere.png";
  EXPECT_THAT(
      test::input_error([&] { cache.bags(other); }),
      HasSubstr("elsewhere.png is not in the feature cache"));
}

}  // namespace
}  // namespace patchwise
