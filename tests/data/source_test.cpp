#include "patchwise/data/source.h"

#include <gmock/gmock.h>

#include "patchwise/base/error.h"
#include "patchwise/data/augment.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

Dataset labelled(int64_t n, int64_t classes) {
  Dataset d;
  d.images = torch::arange(n, torch::kInt64).remainder(256).to(torch::kUInt8).view({n, 1, 1, 1});
  d.labels = torch::arange(n, torch::kInt64) % classes;
  for (int64_t k = 0; k < classes; ++k) d.class_names.push_back("c" + std::to_string(k));
  return d;
}

class SourceTest : public test::SeededTest {};

TEST_F(SourceTest, StratifiedSplitKeepsClassProportionsAndIsReproducible) {
  Dataset d = labelled(1000, 4);
  auto [a, b] = stratified_split(d, 0.2, 9);
  EXPECT_EQ(b.size(), 200);
  EXPECT_EQ(a.size(), 800);
  for (int64_t k = 0; k < 4; ++k) EXPECT_EQ(b.labels.eq(k).sum().item<int64_t>(), 50);
  auto [a2, b2] = stratified_split(d, 0.2, 9);
  EXPECT_TRUE(torch::equal(b.images, b2.images));
  auto [a3, b3] = stratified_split(d, 0.2, 10);
  EXPECT_FALSE(torch::equal(b.images, b3.images));
  // Disjoint and complete: every image lands on exactly one side.
  at::Tensor all = torch::cat({a.images.flatten(), b.images.flatten()}).to(torch::kInt64);
  EXPECT_EQ(std::get<0>(torch::_unique(all)).numel(), 256);
}

TEST_F(SourceTest, AlignClassNamesRemapsFolderOrderToTheModelsOrder) {
  Dataset d = labelled(4, 2);
  d.class_names = {"T-shirt_top", "Bag"};  // as folders name them, sorted otherwise
  ASSERT_TRUE(align_class_names(d, {"Bag", "T-shirt/top"}));
  EXPECT_EQ(d.labels[0].item<int64_t>(), 1);
  EXPECT_EQ(d.labels[1].item<int64_t>(), 0);
  Dataset e = labelled(4, 2);
  EXPECT_FALSE(align_class_names(e, {"x", "y"}));
  EXPECT_EQ(e.labels[1].item<int64_t>(), 1);
}

TEST_F(SourceTest, LoadDataNamesWhatItExpected) {
  EXPECT_THAT(
      [&] { load_data(dir_.string(), "train", {}); },
      ::testing::ThrowsMessage<InputError>(::testing::HasSubstr("not a data set")));
  EXPECT_THROW(load_data(dir_.string(), "valid", {}), InputError);
}

TEST_F(SourceTest, AugmentationShiftsWithZeroFillAndFlipsOnly) {
  at::Tensor images = torch::randint(1, 256, {64, 1, 8, 8}, torch::kUInt8);
  AugmentOptions flip;
  flip.flip = true;
  at::Tensor flipped = augment_images(images, flip);
  int64_t mirrored = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const bool same = torch::equal(flipped[i], images[i]);
    const bool mirror = torch::equal(flipped[i], images[i].flip({2}));
    EXPECT_TRUE(same || mirror);
    mirrored += mirror;
  }
  EXPECT_GT(mirrored, 10);
  EXPECT_LT(mirrored, 54);

  AugmentOptions shift;
  shift.shift = 2;
  at::Tensor moved = augment_images(images, shift);
  ASSERT_EQ(moved.sizes(), images.sizes());
  for (int64_t i = 0; i < 64; ++i) {
    // Some (dy, dx) in [-2, 2]^2 explains the image: overlap equal, the rest zero.
    bool found = false;
    for (int64_t dy = -2; dy <= 2 && !found; ++dy) {
      for (int64_t dx = -2; dx <= 2 && !found; ++dx) {
        at::Tensor expected = torch::zeros_like(images[i]);
        const int64_t y0 = std::max<int64_t>(0, dy), x0 = std::max<int64_t>(0, dx);
        const int64_t h = 8 - std::abs(dy), w = 8 - std::abs(dx);
        expected.narrow(1, y0, h).narrow(2, x0, w).copy_(
            images[i].narrow(1, y0 - dy, h).narrow(2, x0 - dx, w));
        found = torch::equal(moved[i], expected);
      }
    }
    EXPECT_TRUE(found) << "image " << i;
  }
}

}  // namespace
}  // namespace patchwise
