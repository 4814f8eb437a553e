#include "patchwise/fusion/fusion.h"

#include <gmock/gmock.h>

#include <cmath>

#include "patchwise/base/error.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/models/backbone.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

/// Two patches, two classes: patch 1 has probabilities (0.25, 0.75), patch 2 (0.5, 0.5).
at::Tensor two_patch_logits() {
  return torch::tensor({0.0, std::log(3.0), 0.0, 0.0}, torch::kFloat64).view({1, 2, 2});
}

std::vector<double> probs(FusionRule rule, const at::Tensor& logits) {
  at::Tensor p = fuse(rule, logits).exp()[0].contiguous();
  return {p[0].item<double>(), p[1].item<double>()};
}

// The four rules' tests on these two patches below: a handful of float64 roundings
// (log_softmax, the rule's sum or maximum, log, exp) of values of order 1, each within
// u = 2^-53 = 1.1e-16 of its value; 1e-12 is over a thousand times their sum.
TEST(FusionTest, MeanAveragesPatchProbabilities) {
  auto p = probs(FusionRule::kMean, two_patch_logits());
  EXPECT_NEAR(p[0], 0.375, 1e-12);
  EXPECT_NEAR(p[1], 0.625, 1e-12);
}

TEST(FusionTest, GMeanIsTheNormalizedGeometricMean) {
  auto p = probs(FusionRule::kGMean, two_patch_logits());
  const double a = std::sqrt(0.25 * 0.5), b = std::sqrt(0.75 * 0.5);
  EXPECT_NEAR(p[0], a / (a + b), 1e-12);
  EXPECT_NEAR(p[1], b / (a + b), 1e-12);
}

TEST(FusionTest, GMeanEqualsSoftmaxOfTheMeanLogits) {
  at::Tensor logits = torch::randn({4, 5, 10}, torch::kFloat64);
  // Float64: both sides round means of 5 values of order 1 and log-softmaxes of 10, ~1e-15
  // apart, far inside allclose's default rtol 1e-5 and atol 1e-8.
  EXPECT_TRUE(
      torch::allclose(fuse(FusionRule::kGMean, logits), torch::log_softmax(logits.mean(1), 1)));
}

TEST(FusionTest, MaxRenormalizesThePerClassMaximum) {
  auto p = probs(FusionRule::kMax, two_patch_logits());
  EXPECT_NEAR(p[0], 0.5 / 1.25, 1e-12);
  EXPECT_NEAR(p[1], 0.75 / 1.25, 1e-12);
}

TEST(FusionTest, VoteBreaksATieByTheMeanProbability) {
  // Argmaxes: patch 1 -> class 1, patch 2 (a tie inside the patch) -> class 0.
  // One vote each; the mean probabilities (0.375, 0.625) break the tie for class 1.
  auto p = probs(FusionRule::kVote, two_patch_logits());
  EXPECT_NEAR(p[0], (1 + 0.375) / 3, 1e-12);
  EXPECT_NEAR(p[1], (1 + 0.625) / 3, 1e-12);
}

TEST(FusionTest, VoteFollowsTheMajorityAgainstConfidence) {
  // Two patches mildly say class 0, one is sure of class 1.
  at::Tensor logits =
      torch::tensor({0.2, 0.0, 0.2, 0.0, 0.0, 9.0}, torch::kFloat64).view({1, 3, 2});
  EXPECT_EQ(fuse(FusionRule::kVote, logits).argmax(1).item<int64_t>(), 0);
  EXPECT_EQ(fuse(FusionRule::kMean, logits).argmax(1).item<int64_t>(), 1);
}

TEST(FusionTest, EveryRuleGivesNormalizedFiniteLogProbabilitiesAtExtremes) {
  // Probabilities of 1e-30 and below, and logits of +-1000.
  at::Tensor logits =
      torch::tensor({0.0, -69.0776, 1000.0, -1000.0, 0.0, 0.0}, torch::kFloat32).view({1, 3, 2});
  for (FusionRule rule : fixed_fusion_rules()) {
    at::Tensor out = fuse(rule, logits);
    EXPECT_TRUE(torch::isfinite(out).all().item<bool>()) << fusion_rule_name(rule);
    // Float32 (u = 2^-24): a class's log-probability log p carries a few u times |log p|
    // plus a few u, and p |log p| <= 1/e, so the probabilities' sum is off by a few u per
    // class (the large |log p| belong to p that underflow): under 1e-6, and 1e-5 = 170 u.
    EXPECT_NEAR(out.exp().sum().item<double>(), 1.0, 1e-5) << fusion_rule_name(rule);
  }
  at::Tensor random = torch::randn({6, 4, 10}) * 30;
  // The same bound for 10 classes: a few u each, well under 1e-5.
  for (FusionRule rule : fixed_fusion_rules()) {
    EXPECT_TRUE(torch::allclose(fuse(rule, random).exp().sum(1), torch::ones({6}), 1e-5, 1e-5))
        << fusion_rule_name(rule);
  }
}

TEST(FusionTest, OnePatchFusesToItsOwnDistribution) {
  at::Tensor logits = torch::randn({3, 1, 10}, torch::kFloat64);
  // Float64: a rule over one patch is its log_softmax up to a rounding or two (~1e-15),
  // far inside allclose's default rtol 1e-5 and atol 1e-8.
  for (FusionRule rule : {FusionRule::kMean, FusionRule::kGMean, FusionRule::kMax}) {
    EXPECT_TRUE(torch::allclose(fuse(rule, logits), torch::log_softmax(logits.squeeze(1), 1)))
        << fusion_rule_name(rule);
  }
}

TEST(FusionTest, NamesRoundTripAndUnknownNamesAreRefused) {
  for (FusionRule rule : all_fusion_rules()) {
    EXPECT_EQ(parse_fusion_rule(fusion_rule_name(rule)), rule);
  }
  EXPECT_THAT(
      [] { parse_fusion_rule("median"); },
      ::testing::ThrowsMessage<InputError>(::testing::HasSubstr(
          "'median', expected mean, gmean, max, vote, attention, gated-attention, concat or iqm")));
  EXPECT_EQ(parse_fusion_rule("gated-attention"), FusionRule::kGatedAttention);
  EXPECT_TRUE(fusion_rule_is_learned(FusionRule::kAttention));
  EXPECT_FALSE(fusion_rule_is_learned(FusionRule::kMax));
  EXPECT_TRUE(fusion_rule_is_learned(FusionRule::kConcat));
  EXPECT_FALSE(fusion_rule_has_attention(FusionRule::kConcat));
  EXPECT_TRUE(fusion_rule_needs_positions(FusionRule::kConcat));
  EXPECT_FALSE(fusion_rule_needs_positions(FusionRule::kGatedAttention));
  EXPECT_NO_THROW(check_fusion_fits(FusionRule::kConcat, /*tiled=*/false));
  EXPECT_NO_THROW(check_fusion_fits(FusionRule::kGatedAttention, /*tiled=*/true));
  EXPECT_THAT(
      [] { check_fusion_fits(FusionRule::kConcat, /*tiled=*/true); },
      ::testing::ThrowsMessage<OptionError>(
          ::testing::HasSubstr("fusion: concat: bags of tiles have no fixed positions")));
  EXPECT_THROW(fuse(FusionRule::kConcat, torch::zeros({1, 2, 3})), InputError);
  EXPECT_THROW(fuse(FusionRule::kAttention, torch::zeros({1, 2, 3})), InputError);
  EXPECT_FALSE(fusion_rule_is_differentiable(FusionRule::kVote));
  EXPECT_TRUE(fusion_rule_is_differentiable(FusionRule::kGMean));
}

// concat: log_softmax(sum_i W_i h_i + b), W_i the block of W that position i's features
// meet; summed here position by position, in float64. Both sum the same 4 x 64 = 256
// products, each within 256 u (u = 2^-53) of their magnitudes: Linear starts |w| <= 1/16
// and the features are below 1, so 256 u * 16 = 4.5e-13 at worst, below 1e-12 (+ rtol).
TEST(FusionTest, ConcatIsALinearHeadOverTheFeaturesInGridOrder) {
  torch::manual_seed(3);
  ModelConfig c;
  c.class_names = {"a", "b", "c"};
  c.backbone.num_classes = 3;
  c.normalization = {{0.3}, {0.2}};
  c.fusion = FusionRule::kConcat;
  PatchClassifier model(c);
  model->to(torch::kFloat64);
  model->eval();
  PatchOutput out = model->forward(torch::randn({2, 1, 28, 28}, torch::kFloat64));
  auto params = model->named_parameters();
  const at::Tensor w = params["concat.weight"];
  const int64_t features = out.features.size(2);
  ASSERT_EQ(w.sizes(), (std::vector<int64_t>{3, 4 * features}));
  at::Tensor logits = params["concat.bias"].unsqueeze(0).expand({2, 3}).clone();
  for (int64_t i = 0; i < 4; ++i) {
    logits += torch::matmul(out.features.select(1, i), w.narrow(1, i * features, features).t());
  }
  EXPECT_TRUE(torch::allclose(out.log_probs, torch::log_softmax(logits, 1), 1e-12, 1e-12));
  EXPECT_FALSE(out.attention.defined());
  const std::vector<at::Tensor> head = model->class_head_parameters();  // classifier, concat
  EXPECT_EQ(head.size(), model->backbone().classifier_parameters().size() + 2);
  EXPECT_TRUE(head.back().is_same(params["concat.bias"]));
  model->set_fusion(FusionRule::kGMean);  // evaluated with a fixed rule, the head is unused
  PatchOutput fixed = model->forward(torch::randn({2, 1, 28, 28}, torch::kFloat64));
  // forward fuses with this same fuse() on these same logits: equal bit for bit.
  EXPECT_TRUE(torch::equal(fixed.log_probs, fuse(FusionRule::kGMean, fixed.patch_logits)));
}

}  // namespace
}  // namespace patchwise
