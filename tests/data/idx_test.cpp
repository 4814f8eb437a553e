#include "patchwise/data/idx.h"

#include <gmock/gmock.h>
#include <zlib.h>

#include <fstream>
#include <vector>

#include "patchwise/base/error.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> be32(int32_t v) {
  return {
      uint8_t(uint32_t(v) >> 24),
      uint8_t(uint32_t(v) >> 16),
      uint8_t(uint32_t(v) >> 8),
      uint8_t(v)};
}

std::vector<uint8_t> images_file(int32_t count, int32_t rows, int32_t cols, int64_t payload) {
  std::vector<uint8_t> bytes;
  for (int32_t v : {kIdxImagesMagic, count, rows, cols}) {
    auto b = be32(v);
    bytes.insert(bytes.end(), b.begin(), b.end());
  }
  for (int64_t i = 0; i < payload; ++i) bytes.push_back(uint8_t(i % 251));
  return bytes;
}

std::vector<uint8_t> labels_file(int32_t count, int64_t payload) {
  std::vector<uint8_t> bytes = be32(kIdxLabelsMagic);
  auto c = be32(count);
  bytes.insert(bytes.end(), c.begin(), c.end());
  for (int64_t i = 0; i < payload; ++i) bytes.push_back(uint8_t(i % 10));
  return bytes;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(
          reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

class IdxTest : public test::SeededTest {};

TEST_F(IdxTest, ReadsPlainImagesIntoUint8NCHWWithExactPixels) {
  write_bytes(path("img"), images_file(3, 2, 4, 3 * 2 * 4));
  at::Tensor images = read_idx_images(path("img"));
  ASSERT_EQ(images.sizes(), (std::vector<int64_t>{3, 1, 2, 4}));
  EXPECT_EQ(images.scalar_type(), torch::kUInt8);
  EXPECT_EQ(images[0][0][0][0].item<int>(), 0);
  EXPECT_EQ(images[1][0][1][3].item<int>(), 15);  // byte index 1*8 + 1*4 + 3
  EXPECT_EQ(images[2][0][1][3].item<int>(), 23);
}

TEST_F(IdxTest, ReadsGzipCompressedFilesTheSameAsPlain) {
  auto bytes = images_file(5, 3, 3, 45);
  write_bytes(path("plain"), bytes);
  write_gz(path("packed.gz"), bytes);
  EXPECT_TRUE(torch::equal(read_idx_images(path("plain")), read_idx_images(path("packed.gz"))));
}

TEST_F(IdxTest, ReadsLabelsAsInt64) {
  write_gz(path("lab.gz"), labels_file(12, 12));
  at::Tensor labels = read_idx_labels(path("lab.gz"));
  ASSERT_EQ(labels.numel(), 12);
  EXPECT_EQ(labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(labels[11].item<int64_t>(), 1);
}

TEST_F(IdxTest, RefusesAMissingFile) {
  EXPECT_THAT(
      [&] { read_idx_images(path("nothing")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("no such file")));
}

TEST_F(IdxTest, RefusesADirectoryWhereAFileIsExpected) {
  EXPECT_THAT(
      [&] { read_idx_images(dir_.string()); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("expected a file")));
}

TEST_F(IdxTest, RefusesTheWrongMagicNamingBothNumbers) {
  write_bytes(path("lab"), labels_file(4, 4));
  EXPECT_THAT(
      [&] { read_idx_images(path("lab")); },
      ::testing::ThrowsMessage<InputError>(
          AllOf(HasSubstr("wrong magic number 2049"), HasSubstr("expected 2051"))));
}

TEST_F(IdxTest, RefusesATruncatedPayload) {
  write_bytes(path("img"), images_file(3, 2, 2, 11));
  EXPECT_THAT(
      [&] { read_idx_images(path("img")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("11 bytes of pixels")));
}

TEST_F(IdxTest, RefusesATruncatedHeader) {
  write_bytes(path("img"), {0, 0, 8, 3, 0});
  EXPECT_THAT(
      [&] { read_idx_images(path("img")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("truncated")));
}

TEST_F(IdxTest, RefusesAHugeDeclaredCountWithoutAllocatingIt) {
  write_bytes(path("img"), images_file(2000000000, 60000, 60000, 16));
  EXPECT_THAT(
      [&] { read_idx_images(path("img")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("declares 2000000000 images")));
}

TEST_F(IdxTest, RefusesCorruptGzipData) {
  auto bytes = images_file(5, 3, 3, 45);
  write_gz(path("bad.gz"), bytes);
  std::fstream f(path("bad.gz"), std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(20);
  f.write("\xff\xff\xff\xff\xff\xff", 6);
  f.close();
  EXPECT_THROW(read_idx_images(path("bad.gz")), InputError);
}

TEST_F(IdxTest, SplitRefusesImageAndLabelCountsThatDiffer) {
  write_bytes(path("train-images-idx3-ubyte"), images_file(4, 2, 2, 16));
  write_bytes(path("train-labels-idx1-ubyte"), labels_file(5, 5));
  EXPECT_THAT(
      [&] { load_idx_split(dir_.string(), "train"); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("4 images but 5 labels")));
}

TEST_F(IdxTest, SplitFindsFilesLimitsAndNamesClasses) {
  write_bytes(path("train-images-idx3-ubyte"), images_file(20, 2, 2, 80));
  write_gz(path("train-labels-idx1-ubyte.gz"), labels_file(20, 20));
  Dataset data = load_idx_split(dir_.string(), "train", 7);
  EXPECT_EQ(data.size(), 7);
  EXPECT_EQ(data.labels.size(0), 7);
  ASSERT_EQ(data.num_classes(), 10);
  EXPECT_EQ(data.class_names[3], "3");
}

TEST_F(IdxTest, SplitNamesTheMissingFile) {
  EXPECT_THAT(
      [&] { load_idx_split(dir_.string(), "t10k"); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("t10k-images-idx3-ubyte")));
}

TEST_F(IdxTest, WrittenFilesReadBackIdentically) {
  at::Tensor images = torch::randint(0, 256, {6, 1, 5, 7}, torch::kUInt8);
  at::Tensor labels = torch::randint(0, 10, {6}, torch::kInt64);
  write_idx_images(path("i"), images);
  write_idx_labels(path("l"), labels);
  EXPECT_TRUE(torch::equal(read_idx_images(path("i")), images));
  EXPECT_TRUE(torch::equal(read_idx_labels(path("l")), labels));
}

TEST(FashionMnist, KnowsTheTenClassNames) {
  ASSERT_EQ(fashion_mnist_class_names().size(), 10u);
  EXPECT_EQ(fashion_mnist_class_names()[6], "Shirt");
}

}  // namespace
}  // namespace patchwise
