#include "patchwise/patch/grid.h"

#include <gmock/gmock.h>

#include "patchwise/base/error.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

/// [1,1,H,W] float with pixel (y, x) = y * W + x.
at::Tensor ramp_image(int64_t h, int64_t w) {
  return torch::arange(h * w, torch::kFloat32).view({1, 1, h, w});
}

PatchGridOptions seed_options(int64_t input) {
  PatchGridOptions o;
  o.rows = 2;
  o.cols = 2;
  o.patch_h = o.patch_w = 18;
  o.input = input;
  return o;
}

class PatchGridTest : public test::SeededTest {};

TEST_F(PatchGridTest, SeedGridHasFourCornerPatchesAtStrideTen) {
  PatchGrid grid(seed_options(32), 28, 28);
  ASSERT_EQ(grid.count(), 4);
  std::vector<std::pair<int64_t, int64_t>> corners;
  for (const PatchBox& b : grid.boxes()) corners.emplace_back(b.y, b.x);
  EXPECT_EQ(
      corners, (std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {0, 10}, {10, 0}, {10, 10}}));
  EXPECT_EQ(grid.describe(), "2x2 grid of 18x18 patches, stride 10x10, resized to 32x32");
}

TEST_F(PatchGridTest, CutsExactPixelsWhenNoResizeIsNeeded) {
  PatchGrid grid(seed_options(/*input=*/18), 28, 28);
  at::Tensor patches = grid.cut(ramp_image(28, 28));
  ASSERT_EQ(patches.sizes(), (std::vector<int64_t>{1, 4, 1, 18, 18}));
  // Cutting copies pixels: exact. Patch 1 is the top-right corner: pixel (r, c) comes from
  // image (r, c + 10).
  EXPECT_EQ(patches[0][1][0][0][0].item<float>(), 10.0f);
  EXPECT_EQ(patches[0][1][0][17][17].item<float>(), 17 * 28 + 27.0f);
  // Patch 2 is the bottom-left corner: image (r + 10, c).
  EXPECT_EQ(patches[0][2][0][0][0].item<float>(), 10 * 28.0f);
  EXPECT_EQ(patches[0][3][0][5][7].item<float>(), 15 * 28 + 17.0f);
}

TEST_F(PatchGridTest, MatchesTensorFlowValidExtractPatches) {
  // TF's extract_patches(ksize 18, stride 10, VALID) equals a double unfold.
  at::Tensor image = torch::rand({3, 2, 28, 28});
  PatchGrid grid(seed_options(18), 28, 28);
  at::Tensor reference = image.unfold(2, 18, 10)
                             .unfold(3, 18, 10)  // [B,C,2,2,18,18]
                             .permute({0, 2, 3, 1, 4, 5})
                             .reshape({3, 4, 2, 18, 18});
  EXPECT_TRUE(torch::equal(grid.cut(image), reference));  // copies of pixels: exact
}

TEST_F(PatchGridTest, ResizesBilinearlyWithoutAlignedCorners) {
  PatchGridOptions o;
  o.rows = o.cols = 1;
  o.patch_h = o.patch_w = 4;
  o.input = 8;
  PatchGrid grid(o, 4, 4);
  at::Tensor image = torch::arange(4, torch::kFloat32).view({1, 1, 1, 4}).expand({1, 1, 4, 4});
  at::Tensor out = grid.cut(image);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 1, 1, 8, 8}));
  // Output column j samples source x = (j + 0.5) / 2 - 0.5, clamped to [0, 3]. Weights in
  // quarters on small integers: exact in float32 in any order.
  const std::vector<float> expected = {0.0f, 0.25f, 0.75f, 1.25f, 1.75f, 2.25f, 2.75f, 3.0f};
  for (int j = 0; j < 8; ++j) EXPECT_FLOAT_EQ(out[0][0][0][3][j].item<float>(), expected[j]);
}

TEST_F(PatchGridTest, ResizedPatchesHaveTheInputShapeForEveryChannel) {
  PatchGrid grid(seed_options(32), 28, 28);
  at::Tensor out = grid.cut(torch::ones({5, 3, 28, 28}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{5, 4, 3, 32, 32}));
  // Weights summing to 1 up to a few float32 roundings (u = 2^-24) on ones: within 1e-6,
  // inside allclose's default rtol 1e-5.
  EXPECT_TRUE(torch::allclose(out, torch::ones_like(out)));
}

TEST_F(PatchGridTest, WholeImageGridIsTheIdentity) {
  PatchGridOptions o;
  o.rows = o.cols = 1;
  o.patch_h = o.patch_w = 28;
  o.input = 28;
  at::Tensor image = torch::rand({2, 1, 28, 28});
  EXPECT_TRUE(torch::equal(PatchGrid(o, 28, 28).cut(image).squeeze(1), image));  // a copy
}

TEST_F(PatchGridTest, StrideFollowsTheValidRule) {
  PatchGridOptions o = seed_options(32);
  o.rows = o.cols = 0;
  o.stride_h = o.stride_w = 5;
  PatchGrid grid(o, 28, 28);  // (28 - 18) / 5 + 1 = 3
  EXPECT_EQ(grid.rows(), 3);
  EXPECT_EQ(grid.cols(), 3);
  EXPECT_EQ(grid.boxes().back().y, 10);
  o.stride_h = o.stride_w = 4;  // (28 - 18) / 4 + 1 = 3, the last patch stops at 26
  EXPECT_EQ(PatchGrid(o, 28, 28).boxes().back().x, 8);
}

TEST_F(PatchGridTest, RectangularPatchesAndGrids) {
  PatchGridOptions o;
  o.rows = 3;
  o.cols = 2;
  o.patch_h = 14;
  o.patch_w = 20;
  o.input = 24;
  PatchGrid grid(o, 28, 30);  // rows: stride 7; cols: stride 10
  ASSERT_EQ(grid.count(), 6);
  EXPECT_EQ(grid.boxes()[5].y, 14);
  EXPECT_EQ(grid.boxes()[5].x, 10);
  EXPECT_EQ(
      grid.cut(torch::zeros({1, 1, 28, 30})).sizes(), (std::vector<int64_t>{1, 6, 1, 24, 24}));
}

TEST_F(PatchGridTest, FiveCropAndTenCropCutCornersCentreAndMirrors) {
  PatchGridOptions o;
  o.layout = PatchLayout::kTenCrop;
  o.patch_h = o.patch_w = 3;
  o.input = 3;
  PatchGrid grid(o, 5, 5);
  ASSERT_EQ(grid.count(), 10);
  at::Tensor p = grid.cut(ramp_image(5, 5))[0];
  EXPECT_EQ(p[0][0][0][0].item<float>(), 0.0f);   // top-left
  EXPECT_EQ(p[1][0][0][0].item<float>(), 2.0f);   // top-right
  EXPECT_EQ(p[2][0][0][0].item<float>(), 10.0f);  // bottom-left
  EXPECT_EQ(p[3][0][0][0].item<float>(), 12.0f);  // bottom-right
  EXPECT_EQ(p[4][0][0][0].item<float>(), 6.0f);   // centre
  // Mirrors are copies: exact.
  EXPECT_TRUE(torch::equal(p[5], p[0].flip({2})));
  EXPECT_TRUE(torch::equal(p[9], p[4].flip({2})));
}

TEST_F(PatchGridTest, RefusesAPatchLargerThanTheImage) {
  PatchGridOptions o = seed_options(32);
  o.patch_h = o.patch_w = 30;
  EXPECT_THAT(
      [&] { PatchGrid(o, 28, 28); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("larger than the image")));
}

TEST_F(PatchGridTest, RefusesAFlushGridWithANonIntegerStride) {
  PatchGridOptions o = seed_options(32);
  o.rows = o.cols = 4;  // (28 - 18) / 3 is not an integer
  EXPECT_THAT(
      [&] { PatchGrid(o, 28, 28); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("not an integer")));
}

TEST_F(PatchGridTest, RefusesAGridThatContradictsTheStride) {
  PatchGridOptions o = seed_options(32);
  o.rows = o.cols = 3;
  o.stride_h = o.stride_w = 10;
  EXPECT_THAT(
      [&] { PatchGrid(o, 28, 28); }, ::testing::ThrowsMessage<InputError>(HasSubstr("fits 2")));
}

TEST_F(PatchGridTest, RefusesImagesOfAnotherSize) {
  PatchGrid grid(seed_options(32), 28, 28);
  EXPECT_THROW(grid.cut(torch::zeros({1, 1, 32, 32})), InputError);
}

TEST(PatchLayoutNames, RoundTripAndRefuseUnknown) {
  for (PatchLayout l : {PatchLayout::kGrid, PatchLayout::kFiveCrop, PatchLayout::kTenCrop}) {
    EXPECT_EQ(parse_patch_layout(patch_layout_name(l)), l);
  }
  EXPECT_THROW(parse_patch_layout("spiral"), InputError);
}

}  // namespace
}  // namespace patchwise
