// Padded bags (patch/bags.h, pad_bags) of different sizes: padding and masks must never
// change what fusion, the model or the loss give.

#include <gmock/gmock.h>

#include <vector>

#include "patchwise/fusion/fusion.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/patch/bags.h"
#include "patchwise/train/loss.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

class PaddedBagsTest : public test::SeededTest {};

/// Bags of 3, 1 and 5 rows of K = 4 logits each, flat [9,4], in float64.
const std::vector<int64_t> kCounts = {3, 1, 5};

at::Tensor flat_logits() { return torch::randn({9, 4}, torch::kFloat64) * 3; }

/// Bag b of `flat` alone, as a [1,n,...] batch of one full bag.
at::Tensor bag(const at::Tensor& flat, size_t b) {
  int64_t start = 0;
  for (size_t i = 0; i < b; ++i) start += kCounts[i];
  return flat.narrow(0, start, kCounts[b]).unsqueeze(0);
}

TEST_F(PaddedBagsTest, PadBagsPlacesEachBagsRowsFirstAndMasksThePadding) {
  at::Tensor flat = torch::arange(9, torch::kFloat64).view({9, 1});
  PaddedBags p = pad_bags(flat, kCounts);
  ASSERT_EQ(p.values.sizes(), (std::vector<int64_t>{3, 5, 1}));
  ASSERT_TRUE(p.mask.defined());
  EXPECT_EQ(p.mask.sum().item<int64_t>(), 9);
  EXPECT_EQ(p.values[1][0][0].item<double>(), 3.0);  // bag 1's only row
  EXPECT_EQ(p.values[2][4][0].item<double>(), 8.0);
  EXPECT_FALSE(p.mask[1][1].item<bool>());
  EXPECT_TRUE(p.mask[2][4].item<bool>());
}

TEST_F(PaddedBagsTest, EqualBagsAreTheFixedGridLayoutWithoutAMask) {
  at::Tensor flat = flat_logits().narrow(0, 0, 8);
  PaddedBags p = pad_bags(flat, {4, 4});
  EXPECT_FALSE(p.mask.defined());
  EXPECT_TRUE(torch::equal(p.values, flat.view({2, 4, 4})));  // a view: the same values
}

TEST_F(PaddedBagsTest, EmptyBagsAndWrongTotalsAreRefused) {
  EXPECT_THROW(pad_bags(flat_logits(), {9, 0}), c10::Error);
  EXPECT_THROW(pad_bags(flat_logits(), {3, 3}), c10::Error);
}

TEST_F(PaddedBagsTest, EveryFixedRuleFusesAPaddedBagAsTheBagAlone) {
  at::Tensor flat = flat_logits();
  PaddedBags p = pad_bags(flat, kCounts);
  for (FusionRule rule : fixed_fusion_rules()) {
    at::Tensor together = fuse(rule, p.values, p.mask);
    for (size_t b = 0; b < kCounts.size(); ++b) {
      at::Tensor alone = fuse(rule, bag(flat, b))[0];
      // Float64: the padding adds exact zeros (exp(-inf), masked logs) to sums of at most 5
      // log-probabilities of order 10 (logits of 3 randn), in another order: within ~5 u
      // (u = 2^-53) of their magnitudes plus a log's ulp, ~1e-14; 1e-12 leaves a factor 100.
      EXPECT_TRUE(torch::allclose(together[static_cast<int64_t>(b)], alone, 0, 1e-12))
          << fusion_rule_name(rule) << " bag " << b;
    }
  }
}

TEST_F(PaddedBagsTest, PaddingValuesChangeNothingAndGetNoGradient) {
  at::Tensor flat = flat_logits();
  PaddedBags p = pad_bags(flat, kCounts);
  at::Tensor garbage = p.values.detach().clone().masked_fill(~p.mask.unsqueeze(2), 1e6);
  for (FusionRule rule : fixed_fusion_rules()) {
    at::Tensor x = garbage.clone().requires_grad_(true);
    at::Tensor fused = fuse(rule, x, p.mask);
    // The padding is masked before any sum, so only per-row operations on the same real
    // rows remain: the same bound as above.
    EXPECT_TRUE(torch::allclose(fused, fuse(rule, p.values, p.mask), 0, 1e-12))
        << fusion_rule_name(rule);
    if (!fusion_rule_is_differentiable(rule)) continue;
    fused.sum().backward();
    at::Tensor padding_grad = x.grad().masked_select(~p.mask.unsqueeze(2));
    // Exact: masked_fill passes no gradient, and log_softmax's backward of a zero gradient
    // is 0 - p * 0.
    EXPECT_EQ(padding_grad.abs().max().item<double>(), 0.0) << fusion_rule_name(rule);
  }
}

ModelConfig bag_config(FusionRule rule) {
  ModelConfig c;
  c.tiled = true;
  c.image_h = c.image_w = c.grid.input = 28;
  c.grid.rows = c.grid.cols = 1;
  c.grid.patch_h = c.grid.patch_w = 28;
  c.backbone.num_classes = 4;
  c.class_names = {"a", "b", "c", "d"};
  c.normalization = {{0.5}, {0.25}};
  c.fusion = rule;
  return c;
}

TEST_F(PaddedBagsTest, ForwardBagsGivesEachBagTheOutputItHasAlone) {
  for (FusionRule rule :
       {FusionRule::kMean, FusionRule::kMax, FusionRule::kAttention, FusionRule::kGatedAttention}) {
    PatchClassifier model(bag_config(rule));
    model->to(torch::kFloat64);
    model->eval();
    torch::NoGradGuard no_grad;
    at::Tensor tiles = torch::randn({9, 1, 28, 28}, torch::kFloat64);
    PatchOutput together = model->forward_bags(tiles, kCounts);
    ASSERT_TRUE(together.mask.defined());
    int64_t start = 0;
    for (size_t b = 0; b < kCounts.size(); ++b) {
      const int64_t n = kCounts[b];
      PatchOutput alone = model->forward_bags(tiles.narrow(0, start, n), {n});
      const auto row = static_cast<int64_t>(b);
      // Float64 throughout: the two passes differ only in how the backbone batches
      // its sums (a few hundred terms), far below 1e-10.
      EXPECT_TRUE(torch::allclose(together.log_probs[row], alone.log_probs[0], 0, 1e-10))
          << fusion_rule_name(rule) << " bag " << b;
      if (together.attention.defined()) {
        EXPECT_TRUE(
            torch::allclose(together.attention[row].narrow(0, 0, n), alone.attention[0], 0, 1e-10));
        // Exact: a softmax gives exp(-inf) = 0 to the masked positions.
        EXPECT_EQ(together.attention[row].narrow(0, n, 5 - n).abs().sum().item<double>(), 0.0);
      }
      start += n;
    }
  }
}

TEST_F(PaddedBagsTest, PatchLossIsTheMeanOverBagsOfEachBagsMeanOverItsRealTiles) {
  at::Tensor flat = flat_logits();
  PaddedBags p = pad_bags(flat, kCounts);
  PatchOutput out;
  out.patch_logits = p.values;
  out.mask = p.mask;
  out.log_probs = fuse(FusionRule::kMean, p.values, p.mask);
  at::Tensor labels = torch::tensor({2, 0, 3}, torch::kInt64);
  double sum = 0;  // each bag's mean over its tiles, then the mean over bags
  for (size_t b = 0; b < kCounts.size(); ++b) {
    at::Tensor target =
        torch::full({kCounts[b]}, labels[static_cast<int64_t>(b)].item<int64_t>(), torch::kInt64);
    sum += torch::cross_entropy_loss(bag(flat, b)[0], target).item<double>();
  }
  at::Tensor expected = torch::tensor(sum / 3.0, torch::kFloat64);
  // Float64: means of at most 5 cross-entropies of order 10 (logits of 3 randn) and of 3
  // bags in other orders, within ~10 u (u = 2^-53) of 10: 1e-14; 1e-12 leaves a factor 100.
  EXPECT_NEAR(
      compute_loss(LossKind::kPatch, out, labels).item<double>(), expected.item<double>(), 1e-12);
}

TEST_F(PaddedBagsTest, TiledModelsRefuseAPositionEmbeddingAndConcatFusion) {
  ModelConfig c = bag_config(FusionRule::kAttention);
  c.position_embedding = true;
  EXPECT_THROW(PatchClassifier{c}, OptionError);
  EXPECT_THAT(
      [] { PatchClassifier{bag_config(FusionRule::kConcat)}; },
      ::testing::ThrowsMessage<OptionError>(
          ::testing::HasSubstr("fusion: concat: bags of tiles have no fixed positions")));
}

}  // namespace
}  // namespace patchwise
