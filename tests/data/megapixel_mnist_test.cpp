#include "patchwise/data/megapixel_mnist.h"

#include <gmock/gmock.h>

#include <algorithm>

#include "support/test_support.h"

namespace patchwise {
namespace {

/// Two digits per class; every pixel of a class-k digit is 20 * (k + 1).
Dataset flat_digits() {
  Dataset d;
  d.images = torch::empty({20, 1, 28, 28}, torch::kUInt8);
  d.labels = torch::empty({20}, torch::kInt64);
  for (int64_t i = 0; i < 20; ++i) {
    d.images[i].fill_(20 * (i % 10 + 1));
    d.labels[i] = i % 10;
  }
  for (int k = 0; k < 10; ++k) d.class_names.push_back(std::to_string(k));
  d.source = "digits";
  return d;
}

MegapixelOptions small(int64_t scribbles) {
  MegapixelOptions o;
  o.size = 300;
  o.scribbles = scribbles;
  o.seed = 7;
  return o;
}

class MegapixelTest : public test::SeededTest {};

TEST_F(MegapixelTest, ThreeDigitsOfTheLabelAndTwoOthersLieApartOnTheCanvas) {
  const Dataset digits = flat_digits();
  for (int64_t index = 0; index < 20; ++index) {
    MegapixelCanvas c = make_megapixel_canvas(digits, small(0), index);
    ASSERT_EQ(c.digit_boxes.size(), 5u);
    EXPECT_EQ(std::count(c.digit_classes.begin(), c.digit_classes.end(), c.label), 3);
    for (size_t i = 0; i < 5; ++i) {
      const Box& b = c.digit_boxes[i];
      ASSERT_TRUE(b.x >= 0 && b.y >= 0 && b.x + 28 <= 300 && b.y + 28 <= 300);
      const int64_t value = 20 * (c.digit_classes[i] + 1);
      EXPECT_EQ(c.image[0][b.y + 14][b.x + 14].item<int64_t>(), value);
      for (size_t j = 0; j < i; ++j) {
        const Box& o = c.digit_boxes[j];
        EXPECT_FALSE(b.x < o.x + 28 && o.x < b.x + 28 && b.y < o.y + 28 && o.y < b.y + 28);
      }
    }
    // Without noise the digits are all there is.
    EXPECT_EQ((c.image > 0).sum().item<int64_t>(), 5 * 28 * 28);
  }
}

TEST_F(MegapixelTest, ScribblesAddStrokesOutsideTheDigits) {
  const Dataset digits = flat_digits();
  MegapixelCanvas c = make_megapixel_canvas(digits, small(50), 3);
  at::Tensor outside = c.image.clone();
  for (const Box& b : c.digit_boxes) outside[0].narrow(0, b.y, 28).narrow(1, b.x, 28).zero_();
  const int64_t strokes = (outside > 0).sum().item<int64_t>();
  // 100 lines 2 pixels wide: far more than a few hundred pixels, far less than the canvas.
  EXPECT_GT(strokes, 500);
  EXPECT_LT(strokes, 300 * 300 / 4);
}

TEST_F(MegapixelTest, ACanvasDependsOnlyOnTheSeedAndItsIndex) {
  const Dataset digits = flat_digits();
  MegapixelCanvas a = make_megapixel_canvas(digits, small(50), 5);
  MegapixelCanvas b = make_megapixel_canvas(digits, small(50), 5);
  MegapixelCanvas other = make_megapixel_canvas(digits, small(50), 6);
  EXPECT_TRUE(torch::equal(a.image, b.image));
  EXPECT_FALSE(torch::equal(a.image, other.image));
  MegapixelOptions reseeded = small(50);
  reseeded.seed = 8;
  EXPECT_FALSE(torch::equal(a.image, make_megapixel_canvas(digits, reseeded, 5).image));
}

TEST_F(MegapixelTest, NumbersThatCannotMakeACanvasAreRefused) {
  MegapixelOptions o = small(0);
  o.same = 2;  // not a majority of 5
  EXPECT_THROW(check_megapixel_options(o), OptionError);
  o = small(0);
  o.size = 40;
  EXPECT_THROW(check_megapixel_options(o), OptionError);
  o = small(0);
  o.digits = 100;  // 100 digits apart do not fit on 300x300
  o.same = 60;
  EXPECT_THROW(check_megapixel_options(o), OptionError);
  Dataset missing = flat_digits();
  missing.labels.masked_fill_(missing.labels.eq(4), 3);  // no digit of class 4
  EXPECT_THAT(
      test::input_error([&] { make_megapixel_canvas(missing, small(0), 0); }),
      ::testing::HasSubstr("class 4"));
}

}  // namespace
}  // namespace patchwise
