// PatchClassifier (model/patch_classifier.h) on whole images: the shapes of what forward
// gives, the grid's patches reaching the backbone as one batch, the normalization of
// uint8 images, mean fusion against its definition in float64, tile features, the
// configuration it keeps, and the images and configurations it refuses.
#include "patchwise/model/patch_classifier.h"

#include <gmock/gmock.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "patchwise/base/error.h"
#include "patchwise/model/model_file.h"
#include "patchwise/models/backbone.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

/// Float32's unit roundoff.
const double kU = std::ldexp(1.0, -24);

/// How far float32 mean fusion, fuse(kMean), may be from log(mean_p softmax(x_p)) computed
/// exactly on the same patch logits x [B,P,K]. fuse takes a log_softmax over the K classes,
/// then a logsumexp over the P patches, minus log P. Each float32 operation is within u of
/// its result, ATen's exp and log within an ulp (2u). With L the largest |log-softmax| of a
/// patch, every |x_k - max_j x_j| is at most L too, and:
///   log_softmax: x_k - m, K exps, their sum S in [1, K], log S (2 log K <= K) and the
///     last subtraction are off by at most u(3L + 2K + 1);
///   logsumexp over P carries its inputs' error (it is 1-Lipschitz in them) and adds its
///     own, u(3L + 2P + 1);
///   subtracting log P, rounded to float32: u(log P + L) <= u(P + L).
/// In all u(7L + 2K + 3P + 2); doubled for exp and log's 2u and second-order terms.
double mean_fusion_bound(const at::Tensor& patch_logits) {
  const at::Tensor exact = torch::log_softmax(patch_logits.to(torch::kFloat64), 2);
  const double L = exact.abs().max().item<double>();
  const auto K = static_cast<double>(patch_logits.size(2));
  const auto P = static_cast<double>(patch_logits.size(1));
  return 2 * kU * (7 * L + 2 * K + 3 * P + 2);
}

/// log(mean_p softmax(x_p)) of patch logits [B,P,K] in float64: [B,K].
at::Tensor exact_mean_fusion(const at::Tensor& patch_logits) {
  return torch::softmax(patch_logits.to(torch::kFloat64), 2).mean(1).log();
}

class PatchClassifierTest : public test::SeededTest {};

TEST_F(PatchClassifierTest, ForwardGivesEachImagesPatchLogitsFeaturesAndLogProbabilities) {
  PatchClassifier model(test::seed_config());
  model->eval();
  EXPECT_EQ(model->num_patches(), 4);  // 28 = 18 + 10: offsets 0 and 10 on each axis
  EXPECT_EQ(model->num_classes(), 3);
  const int64_t F = model->backbone().feature_dim();
  const PatchOutput out = model->forward(torch::randint(0, 256, {5, 1, 28, 28}, torch::kUInt8));
  EXPECT_EQ(out.patch_logits.sizes(), (std::vector<int64_t>{5, 4, 3}));
  EXPECT_EQ(out.features.sizes(), (std::vector<int64_t>{5, 4, F}));
  EXPECT_EQ(out.log_probs.sizes(), (std::vector<int64_t>{5, 3}));
  EXPECT_EQ(out.log_probs.scalar_type(), at::kFloat);
  EXPECT_FALSE(out.attention.defined());  // mean fusion has no patch weights
  EXPECT_FALSE(out.mask.defined());       // whole images: every row a full grid
  // Each log p_k is within E of its exact value (mean_fusion_bound), so the sum of the
  // exps, taken in float64, is within sum_k p_k (e^E - 1) <= 2E of 1.
  const double E = mean_fusion_bound(out.patch_logits);
  const at::Tensor sums = out.log_probs.to(torch::kFloat64).exp().sum(1);
  EXPECT_LE((sums - 1).abs().max().item<double>(), 2 * E) << sums;
}

TEST_F(PatchClassifierTest, MeanFusionIsTheLogOfTheMeanPatchProbabilities) {
  PatchClassifier model(test::seed_config());
  model->eval();
  torch::NoGradGuard no_grad;
  // Logits far apart from patch to patch, so that other rules give other answers.
  for (at::Tensor p : model->backbone().classifier_parameters()) p.mul_(20);
  const PatchOutput out = model->forward(torch::randint(0, 256, {6, 1, 28, 28}, torch::kUInt8));
  const at::Tensor exact = exact_mean_fusion(out.patch_logits);
  const double E = mean_fusion_bound(out.patch_logits);
  const at::Tensor error = (out.log_probs.to(torch::kFloat64) - exact).abs();
  EXPECT_LE(error.max().item<double>(), E);
  // The check can tell mean fusion apart: the geometric mean, log_softmax of the mean
  // logits, is off by far more than the bound on these logits.
  const at::Tensor gmean = torch::log_softmax(out.patch_logits.to(torch::kFloat64).mean(1), 1);
  EXPECT_GT((gmean - exact).abs().max().item<double>(), 100 * E);
}

TEST_F(PatchClassifierTest, TheBackboneSeesEveryImagesGridPatchesInRowMajorOrderAsOneBatch) {
  PatchClassifier model(test::seed_config());
  model->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor images = torch::randn({3, 1, 28, 28});  // float: taken as normalized
  // The seed grid cut by hand (patch/grid.h): 18x18 at rows and columns 0 and 10, row
  // by row, image by image, each resized bilinearly (corners not aligned) to 32x32.
  std::vector<at::Tensor> patches;
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t y : {0, 10}) {
      for (int64_t x : {0, 10}) patches.push_back(images[b].narrow(1, y, 18).narrow(2, x, 18));
    }
  }
  const at::Tensor batch = torch::nn::functional::interpolate(
      torch::stack(patches),
      torch::nn::functional::InterpolateFuncOptions()
          .size(std::vector<int64_t>{32, 32})
          .mode(torch::kBilinear)
          .align_corners(false));
  const at::Tensor features = model->backbone().features(batch);
  const PatchOutput out = model->forward(images);
  // The same pixels through the same backbone in one batch of the same 12 patches: equal
  // bit for bit. Another order of patches or images would move rows of features.
  EXPECT_TRUE(torch::equal(out.features.flatten(0, 1), features));
  EXPECT_TRUE(torch::equal(out.patch_logits.flatten(0, 1), model->backbone().classify(features)));
}

TEST_F(PatchClassifierTest, UInt8ImagesAreNormalizedChannelByChannelAndFloatOnesAreNot) {
  ModelConfig c = test::seed_config();
  c.image_channels = 3;
  c.normalization = {{0.1, 0.5, 0.9}, {0.2, 0.3, 0.4}};
  PatchClassifier model(c);
  model->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor images = torch::randint(0, 256, {2, 3, 28, 28}, torch::kUInt8);
  const at::Tensor got = model->normalize(images);
  ASSERT_EQ(got.scalar_type(), at::kFloat);
  const at::Tensor mean = torch::tensor({0.1, 0.5, 0.9}, torch::kFloat64).view({1, 3, 1, 1});
  const at::Tensor std = torch::tensor({0.2, 0.3, 0.4}, torch::kFloat64).view({1, 3, 1, 1});
  const at::Tensor scaled = images.to(torch::kFloat64) / 255;
  const at::Tensor exact = (scaled - mean) / std;
  // Float32: x / 255, the float32 mean and the subtraction are each within u of their
  // values (x / 255, m, |x / 255 - m|), an error divided by s; the float32 deviation and
  // the division add 2u of the result. Doubled for the second-order terms.
  const at::Tensor bound =
      2 * kU * ((scaled + mean + (scaled - mean).abs()) / std + 2 * exact.abs());
  const at::Tensor error = (got.to(torch::kFloat64) - exact).abs();
  EXPECT_TRUE(error.le(bound).all().item<bool>()) << (error - bound).max().item<double>();
  // forward normalizes uint8 images once and takes float images as they are: the same
  // values through the same passes, equal bit for bit.
  const PatchOutput from_uint8 = model->forward(images);
  const PatchOutput from_float = model->forward(got);
  EXPECT_TRUE(torch::equal(from_uint8.patch_logits, from_float.patch_logits));
  EXPECT_TRUE(torch::equal(from_uint8.log_probs, from_float.log_probs));
}

TEST_F(PatchClassifierTest, TileFeaturesAreTheBackbonesFeaturesOfEachTile) {
  PatchClassifier model(test::seed_config());
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t F = model->backbone().feature_dim();
  const at::Tensor images = torch::randn({2, 1, 28, 28});
  // The 8 patches forward cuts, given as tiles: the same batch through the same layers,
  // equal bit for bit to forward's features.
  const at::Tensor tiles = model->grid().cut(images).flatten(0, 1);
  const at::Tensor features = model->tile_features(tiles);
  EXPECT_EQ(features.sizes(), (std::vector<int64_t>{8, F}));
  EXPECT_TRUE(torch::equal(features, model->forward(images).features.flatten(0, 1)));
  // uint8 tiles are normalized first, as images are.
  const at::Tensor grey = torch::randint(0, 256, {5, 1, 32, 32}, torch::kUInt8);
  const at::Tensor normalized = model->tile_features(grey);
  EXPECT_EQ(normalized.sizes(), (std::vector<int64_t>{5, F}));
  EXPECT_TRUE(torch::equal(normalized, model->backbone().features(model->normalize(grey))));
  // Tiles must have the backbone's input size.
  EXPECT_THAT(
      [&] {
        model->tile_features(torch::zeros({2, 1, 28, 28}));
      },
      ::testing::ThrowsMessage<c10::Error>(HasSubstr("expects tiles [N,1,32,32]")));
}

TEST_F(PatchClassifierTest, ItKeepsItsConfigurationWithTheBackbonesInputFromTheGrid) {
  ModelConfig given = test::seed_config();
  given.image_channels = 3;
  given.normalization = {{0.1, 0.5, 0.9}, {0.2, 0.3, 0.4}};
  given.grid.rows = given.grid.cols = 3;  // 10x10 patches at stride (28 - 10) / 2 = 9
  given.grid.patch_h = given.grid.patch_w = 10;
  given.grid.input = 24;
  given.fusion = FusionRule::kGMean;
  given.class_names = {"x", "y", "z"};
  PatchClassifier model(given);
  model->eval();
  EXPECT_EQ(model->num_patches(), 9);
  // The backbone takes the images' channels and the grid's input size, whatever its own
  // options said (1 and 32 here); everything else is kept as given.
  EXPECT_EQ(model->config().backbone.in_channels, 3);
  EXPECT_EQ(model->config().backbone.input, 24);
  ModelConfig expected = given;
  expected.backbone.in_channels = 3;
  expected.backbone.input = 24;
  EXPECT_EQ(model_config_to_json(model->config()), model_config_to_json(expected));
  const PatchOutput out = model->forward(torch::randint(0, 256, {2, 3, 28, 28}, torch::kUInt8));
  EXPECT_EQ(out.patch_logits.sizes(), (std::vector<int64_t>{2, 9, 3}));
}

TEST_F(PatchClassifierTest, ImagesAndConfigurationsThatDoNotFitAreRefused) {
  PatchClassifier model(test::seed_config());
  model->eval();
  EXPECT_THAT(
      test::input_error([&] {
        model->forward(torch::zeros({2, 1, 30, 28}, torch::kUInt8));
      }),
      HasSubstr("image size 30x28, but the patch grid was built for 28x28"));
  EXPECT_THAT(
      [&] {
        model->forward(torch::zeros({2, 3, 28, 28}, torch::kUInt8));
      },
      ::testing::ThrowsMessage<c10::Error>(HasSubstr("PatchClassifier expects [B,1,H,W]")));
  ModelConfig two_names = test::seed_config();
  two_names.class_names = {"a", "b"};
  EXPECT_THAT(
      test::input_error([&] { PatchClassifier{two_names}; }),
      HasSubstr("2 class names for 3 classes"));
  ModelConfig colour_normalization = test::seed_config();
  colour_normalization.normalization = {{0.1, 0.5, 0.9}, {0.2, 0.3, 0.4}};
  EXPECT_THAT(
      test::input_error([&] { PatchClassifier{colour_normalization}; }),
      HasSubstr("normalization has 3 means and 3 deviations for 1 image channels"));
}

}  // namespace
}  // namespace patchwise
