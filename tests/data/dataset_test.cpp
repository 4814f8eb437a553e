#include "patchwise/data/dataset.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/test_support.h"

namespace patchwise {
namespace {

class DatasetTest : public test::SeededTest {};

TEST_F(DatasetTest, NormalizationFromTheHistogramMatchesTheFloatingPointDefinition) {
  const at::Tensor images = torch::randint(0, 256, {37, 3, 11, 9}, torch::kUInt8);
  const Normalization norm = compute_normalization(images);
  ASSERT_EQ(norm.mean.size(), 3u);
  for (int64_t c = 0; c < 3; ++c) {
    const at::Tensor plane = images.select(1, c).to(torch::kFloat64) / 255.0;
    // Float64 sums of 37 * 11 * 9 = 3,663 values in [0, 1] (or of 256 histogram terms):
    // within 3,663 u = 4e-13 (u = 2^-53) of the mean, and the variance's error halves in its
    // root: under 1e-12.
    EXPECT_NEAR(norm.mean[c], plane.mean().item<double>(), 1e-12) << c;
    EXPECT_NEAR(norm.std[c], plane.std(/*unbiased=*/false).item<double>(), 1e-12) << c;
  }
}

TEST_F(DatasetTest, AConstantChannelGetsUnitStd) {
  const Normalization norm = compute_normalization(torch::full({4, 1, 5, 5}, 7, torch::kUInt8));
  // 100 * (7 / 255) / 100: a few ulps of 0.027 (3.5e-18); the variance is then far below
  // the 1e-8 under which the std is set to exactly 1.
  EXPECT_NEAR(norm.mean[0], 7.0 / 255.0, 1e-15);
  EXPECT_EQ(norm.std[0], 1.0);
}

}  // namespace
}  // namespace patchwise
