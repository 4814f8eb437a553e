#include "patchwise/data/digits_json.h"

#include <gmock/gmock.h>

#include <fstream>

#include "patchwise/base/error.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

class DigitsJsonTest : public test::SeededTest {
 protected:
  /// DIR/k.json with `count` digits whose pixel p is (p % 11) / 10.
  void write_digits(int k, int count, int extra_values = 0) {
    std::ofstream out(path(std::to_string(k) + ".json"));
    out << "{ \"data\": [";
    for (int i = 0; i < count * 784 + extra_values; ++i)
      out << (i ? "," : "") << (i % 784 % 11) / 10.0;
    out << "]}";
  }
};

TEST_F(DigitsJsonTest, ReadsEveryDigitWithItsFileAsLabel) {
  for (int k = 0; k <= 9; ++k) write_digits(k, k == 3 ? 2 : 1);
  Dataset d = read_digits_json(dir_.string());
  ASSERT_EQ(d.size(), 11);
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{11, 1, 28, 28}));
  EXPECT_EQ(d.labels[4].item<int64_t>(), 3);
  EXPECT_EQ(d.labels[10].item<int64_t>(), 9);
  EXPECT_EQ(d.images[0][0][0][10].item<int>(), 255);  // 1.0
  EXPECT_EQ(d.images[0][0][0][5].item<int>(), 128);   // round(0.5 * 255)
}

TEST_F(DigitsJsonTest, RefusesADigitWithout784Values) {
  for (int k = 0; k <= 9; ++k) write_digits(k, 1, k == 7 ? 5 : 0);
  EXPECT_THAT(
      [&] { read_digits_json(dir_.string()); },
      ::testing::ThrowsMessage<InputError>(
          AllOf(HasSubstr("7.json"), HasSubstr("789 values, expected a multiple of 784"))));
}

TEST_F(DigitsJsonTest, RefusesValuesOutsideTheUnitIntervalAndBadJson) {
  for (int k = 0; k <= 9; ++k) write_digits(k, 1);
  {
    std::ofstream out(path("2.json"));
    out << "{\"data\": [2.5";
    for (int i = 1; i < 784; ++i) out << ",0";
    out << "]}";
  }
  EXPECT_THAT(
      [&] { read_digits_json(dir_.string()); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("value 0 is 2.5")));
  std::ofstream(path("2.json")) << "{\"data\": [0, 1,";
  EXPECT_THAT(
      [&] { read_digits_json(dir_.string()); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("not valid JSON")));
  std::filesystem::remove(path("2.json"));
  EXPECT_THAT(
      [&] { read_digits_json(dir_.string()); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("2.json: missing")));
}

}  // namespace
}  // namespace patchwise
