// Random erasing in the augmentation (data/augment.h): one rectangle of 2 to 33% of the
// image, the input left as it was, and nothing erased when it is off.
#include "patchwise/data/augment.h"

#include <torch/torch.h>

#include <cstdint>

#include "support/test_support.h"

namespace patchwise {
namespace {

class AugmentTest : public test::SeededTest {};

TEST_F(AugmentTest, RandomErasingFillsOneRectangleOfTwoToThirtyThreePercent) {
  const at::Tensor images = torch::zeros({64, 1, 20, 20}, torch::kUInt8);
  AugmentOptions o;
  o.erase = 1;
  const at::Tensor out = augment_images(images, o);
  EXPECT_EQ(images.sum().item<int64_t>(), 0);  // the input stays as it was
  int64_t erased = 0;
  for (int64_t b = 0; b < 64; ++b) {
    const at::Tensor changed = out[b][0].ne(0).nonzero();
    if (changed.size(0) == 0) continue;  // no rectangle fitted in ten tries
    ++erased;
    const auto lo = std::get<0>(changed.min(0));
    const auto hi = std::get<0>(changed.max(0));
    const int64_t area = (hi[0].item<int64_t>() - lo[0].item<int64_t>() + 1) *
                         (hi[1].item<int64_t>() - lo[1].item<int64_t>() + 1);
    // Noise equal to 0 at an edge can shrink the box a little: within a row and column.
    EXPECT_LE(area, 0.33 * 400 + 2 * 20 + 1) << b;
    EXPECT_GE(static_cast<double>(changed.size(0)), 0.02 * 400 * 0.5) << b;
  }
  EXPECT_GT(erased, 48);
  o.erase = 0;
  EXPECT_TRUE(torch::equal(augment_images(images, o), images));
}

}  // namespace
}  // namespace patchwise
