#include "patchwise/data/cifar.h"

#include <gmock/gmock.h>

#include <fstream>

#include "patchwise/base/error.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

/// Record i: label bytes (fine = i % classes, coarse = i % 20), pixel p = (i + p) % 256.
void write_records(const std::string& path, int64_t count, int64_t label_bytes, int64_t classes) {
  std::ofstream out(path, std::ios::binary);
  for (int64_t i = 0; i < count; ++i) {
    if (label_bytes == 2) out.put(static_cast<char>(i % 20));
    out.put(static_cast<char>(i % classes));
    for (int64_t p = 0; p < kCifarPixels; ++p) out.put(static_cast<char>((i + p) % 256));
  }
}

class CifarTest : public test::SeededTest {};

TEST_F(CifarTest, ReadsChannelPlanarRecordsWithLabels) {
  write_records(path("test_batch.bin"), 3, 1, 10);
  Dataset d = read_cifar_file(path("test_batch.bin"), 1, 0, 10);
  ASSERT_EQ(d.images.sizes(), (std::vector<int64_t>{3, 3, 32, 32}));
  EXPECT_EQ(d.labels[2].item<int64_t>(), 2);
  // Pixel bytes are R plane, G plane, B plane: byte 1024 is G(0, 0).
  EXPECT_EQ(d.images[1][1][0][0].item<int>(), (1 + 1024) % 256);
  EXPECT_EQ(d.images[2][2][31][31].item<int>(), (2 + 3071) % 256);
}

TEST_F(CifarTest, LoadsCifar10BatchesAndClassNames) {
  for (int b = 1; b <= 5; ++b)
    write_records(path("data_batch_" + std::to_string(b) + ".bin"), 4, 1, 10);
  write_records(path("test_batch.bin"), 2, 1, 10);
  std::ofstream(path("batches.meta.txt")) << "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\n"
                                             "horse\nship\ntruck\n\n";
  ASSERT_TRUE(is_cifar10_dir(dir_.string()));
  Dataset train = load_cifar10(dir_.string(), "train");
  EXPECT_EQ(train.size(), 20);
  EXPECT_EQ(train.class_names[9], "truck");
  EXPECT_EQ(load_cifar10(dir_.string(), "test").size(), 2);
  EXPECT_EQ(load_cifar10(dir_.string(), "train", 7).size(), 7);
}

TEST_F(CifarTest, Cifar100PicksFineOrCoarseLabels) {
  write_records(path("train.bin"), 30, 2, 100);
  write_records(path("test.bin"), 5, 2, 100);
  ASSERT_TRUE(is_cifar100_dir(dir_.string()));
  Dataset fine = load_cifar100(dir_.string(), "train", CifarLabel::kFine);
  Dataset coarse = load_cifar100(dir_.string(), "train", CifarLabel::kCoarse);
  EXPECT_EQ(fine.labels[25].item<int64_t>(), 25);
  EXPECT_EQ(coarse.labels[25].item<int64_t>(), 5);
  EXPECT_EQ(fine.num_classes(), 100);
  EXPECT_EQ(coarse.num_classes(), 20);
  EXPECT_TRUE(torch::equal(fine.images, coarse.images));
}

TEST_F(CifarTest, RefusesASizeThatIsNotAMultipleOfTheRecord) {
  write_records(path("b.bin"), 2, 1, 10);
  std::ofstream(path("b.bin"), std::ios::app) << "xyz";
  EXPECT_THAT(
      [&] { read_cifar_file(path("b.bin"), 1, 0, 10); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("not a multiple of the 3073-byte")));
}

TEST_F(CifarTest, RefusesALabelOutOfRange) {
  write_records(path("b.bin"), 12, 1, 12);  // labels up to 11
  EXPECT_THAT(
      [&] { read_cifar_file(path("b.bin"), 1, 0, 10); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("record 10 has label 10")));
}

TEST_F(CifarTest, NamesAMissingTrainingBatch) {
  write_records(path("data_batch_1.bin"), 2, 1, 10);
  EXPECT_THAT(
      [&] { load_cifar10(dir_.string(), "train"); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("data_batch_2.bin")));
}

}  // namespace
}  // namespace patchwise
