#include "patchwise/report/heatmap.h"

#include <gmock/gmock.h>

#include "patchwise/base/error.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

PatchClassifier seed_model() {
  ModelConfig c;
  c.class_names = {"a", "b", "c"};
  c.backbone.num_classes = 3;
  c.normalization = {{0.4}, {0.3}};
  PatchClassifier model(c);
  model->eval();
  return model;
}

class HeatmapTest : public test::SeededTest {};

TEST_F(HeatmapTest, GridOnlyValuesAreTheModelsOwnPatchProbabilities) {
  PatchClassifier model = seed_model();
  at::Tensor image = torch::randint(0, 256, {1, 28, 28}, torch::kUInt8);
  HeatmapOptions o;
  o.grid_only = true;
  o.target_class = 2;
  Heatmap h = compute_heatmap(model, image, o);
  torch::NoGradGuard no_grad;
  at::Tensor expected = torch::softmax(model->forward(image.unsqueeze(0)).patch_logits[0], 1)
                            .select(1, 2)
                            .to(torch::kFloat64);
  // compute_heatmap runs the same 4 patches through the same backbone in one pass without
  // gradients, as forward does here: the same operations, equal bit for bit (the
  // conversion to double is exact), so any bound above 0 holds.
  EXPECT_TRUE(torch::allclose(h.probs.view({-1}), expected, 1e-6, 1e-6));
}

TEST_F(HeatmapTest, SlidingAtTheModelsStrideVisitsTheModelsPatches) {
  PatchClassifier model = seed_model();
  at::Tensor image = torch::randint(0, 256, {1, 28, 28}, torch::kUInt8);
  HeatmapOptions o;
  o.stride = 10;  // the seed grid's own stride: positions (0,0) (0,10) (10,0) (10,10)
  Heatmap h = compute_heatmap(model, image, o);
  ASSERT_EQ(h.probs.sizes(), (std::vector<int64_t>{2, 2}));
  torch::NoGradGuard no_grad;
  PatchOutput out = model->forward(image.unsqueeze(0));
  EXPECT_EQ(h.target_class, out.log_probs.argmax(1).item<int64_t>());
  at::Tensor expected = torch::softmax(out.patch_logits[0], 1).select(1, h.target_class);
  // The same 4 patches as the model's grid: equal bit for bit, as above. The coverage is
  // a float64 mean of those values; expected.mean() is float32, within 4 u (u = 2^-24) of
  // probabilities below 1: 2.4e-7, inside 1e-6.
  EXPECT_TRUE(torch::allclose(h.probs.view({-1}), expected.to(torch::kFloat64), 1e-6, 1e-6));
  // Pixel (0, 0) is covered by patch 1 alone; pixel (14, 14) by all four.
  EXPECT_NEAR(h.coverage[0][0].item<double>(), expected[0].item<double>(), 1e-6);
  EXPECT_NEAR(h.coverage[14][14].item<double>(), expected.mean().item<double>(), 1e-6);
}

TEST_F(HeatmapTest, StrideOneCoversEveryPosition) {
  PatchClassifier model = seed_model();
  Heatmap h = compute_heatmap(model, torch::zeros({1, 28, 28}, torch::kUInt8), {1});
  EXPECT_EQ(h.probs.sizes(), (std::vector<int64_t>{11, 11}));
  EXPECT_FALSE(h.coverage.isnan().any().item<bool>());
}

TEST_F(HeatmapTest, RefusesAClassOutOfRangeAndABadStride) {
  PatchClassifier model = seed_model();
  at::Tensor image = torch::zeros({1, 28, 28}, torch::kUInt8);
  HeatmapOptions o;
  o.target_class = 3;
  EXPECT_THAT(
      [&] { compute_heatmap(model, image, o); },
      ::testing::ThrowsMessage<OptionError>(HasSubstr("class: 3 out of range")));
  o.target_class = -1;
  o.stride = 0;
  EXPECT_THAT(
      [&] { compute_heatmap(model, image, o); },
      ::testing::ThrowsMessage<OptionError>(HasSubstr("stride: 0")));
  o.stride = 29;
  EXPECT_THROW(compute_heatmap(model, image, o), InputError);
}

TEST_F(HeatmapTest, RenderingHasTheEnlargedSizePlusBarAndTitle) {
  PatchClassifier model = seed_model();
  at::Tensor image = torch::zeros({1, 28, 28}, torch::kUInt8);
  Heatmap h = compute_heatmap(model, image, {2});
  at::Tensor picture = render_heatmap(image, h, "t", 4);
  EXPECT_EQ(picture.size(0), 3);
  EXPECT_EQ(picture.size(1), 28 * 4 + 22);
  EXPECT_GT(picture.size(2), 28 * 4);
}

TEST_F(HeatmapTest, TileScoresLandOnTheirBoxesOfTheThumbnailDividedByTheLargest) {
  // A 1000x500 image drawn on a 100x50 thumbnail: tiles of 100 become 10x10 squares.
  const std::vector<Box> boxes = {{0, 0, 100, 100}, {500, 200, 100, 100}, {550, 200, 100, 100}};
  const std::vector<double> scores = {0.1, 0.4, 0.2};
  Heatmap h = tile_heatmap(boxes, scores, 1000, 500, 50, 100);
  // Exact: 0.1, 0.2 and 0.4 are one double times 1, 2 and 4, so each over the largest is
  // 0.25, 0.5 or 1 exactly, and so are their sums and halves.
  ASSERT_EQ(h.coverage.sizes(), (std::vector<int64_t>{50, 100}));
  EXPECT_DOUBLE_EQ(h.coverage[5][5].item<double>(), 0.25);
  EXPECT_DOUBLE_EQ(h.coverage[25][52].item<double>(), 1.0);
  EXPECT_DOUBLE_EQ(h.coverage[25][57].item<double>(), 0.75);  // overlap: the mean of both
  EXPECT_DOUBLE_EQ(h.coverage[25][62].item<double>(), 0.5);
  EXPECT_TRUE(std::isnan(h.coverage[40][90].item<double>()));  // no tile there
  EXPECT_THROW(tile_heatmap(boxes, {0.1}, 1000, 500, 50, 100), InputError);
  at::Tensor strip = render_crop_strip(
      {torch::zeros({1, 32, 32}, torch::kUInt8), torch::full({3, 32, 32}, 200, torch::kUInt8)},
      {0.5, 0.25});
  EXPECT_EQ(strip.size(1), 32 + 16);
  EXPECT_EQ(strip[0][10][40 + 10].item<int64_t>(), 200);  // the second crop, after a gap of 8
}

}  // namespace
}  // namespace patchwise
