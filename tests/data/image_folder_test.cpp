#include "patchwise/data/image_folder.h"

#include <gmock/gmock.h>

#include <filesystem>
#include <fstream>
#include <tuple>

#include "patchwise/base/error.h"
#include "patchwise/data/image.h"
#include "patchwise/data/source.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class ImageFolderTest : public test::SeededTest {
 protected:
  /// root/<cls>/<name> holding a constant image of `value`.
  void add(
      const std::string& cls, const std::string& name, int64_t channels, int64_t h, int64_t w,
      int value) {
    fs::create_directories(dir_ / "root" / cls);
    write_image(
        (dir_ / "root" / cls / name).string(), torch::full({channels, h, w}, value, torch::kUInt8));
  }
  std::string root() const { return (dir_ / "root").string(); }
};

TEST_F(ImageFolderTest, ReadsPngAndJpegWithSortedClassFolders) {
  add("zebra", "a.png", 1, 6, 5, 200);
  add("ant", "b.png", 1, 6, 5, 10);
  add("ant", "c.jpg", 1, 6, 5, 100);
  Dataset d = load_image_folder(root(), {});
  ASSERT_EQ(d.class_names, (std::vector<std::string>{"ant", "zebra"}));
  ASSERT_EQ(d.images.sizes(), (std::vector<int64_t>{3, 1, 6, 5}));
  EXPECT_EQ(d.labels[0].item<int64_t>(), 0);
  EXPECT_EQ(d.labels[2].item<int64_t>(), 1);
  EXPECT_EQ(d.images[0][0][2][2].item<int>(), 10);
  EXPECT_NEAR(d.images[1][0][2][2].item<int>(), 100, 2);  // JPEG is lossy
  EXPECT_EQ(d.images[2][0][0][0].item<int>(), 200);
}

TEST_F(ImageFolderTest, ColourAnywhereMakesEveryImageThreeChannels) {
  add("a", "gray.png", 1, 4, 4, 50);
  add("b", "rgb.png", 3, 4, 4, 90);
  Dataset d = load_image_folder(root(), {});
  EXPECT_EQ(d.channels(), 3);
  EXPECT_EQ(d.images[0][2][1][1].item<int>(), 50);
}

TEST_F(ImageFolderTest, RefusesMixedSizesListingThemUnlessResized) {
  add("a", "small.png", 1, 4, 4, 0);
  add("a", "large.png", 1, 8, 6, 0);
  EXPECT_THAT(
      [&] { load_image_folder(root(), {}); },
      ::testing::ThrowsMessage<InputError>(
          AllOf(HasSubstr("2 different sizes"), HasSubstr("4x4"), HasSubstr("8x6"))));
  ImageFolderOptions o;
  o.height = 5;
  o.width = 7;
  EXPECT_EQ(load_image_folder(root(), o).images.sizes(), (std::vector<int64_t>{2, 1, 5, 7}));
}

TEST_F(ImageFolderTest, SkipsUnreadableFilesOrFailsWhenStrict) {
  add("a", "good.png", 1, 4, 4, 0);
  std::ofstream((dir_ / "root" / "a" / "notes.txt").string()) << "not an image";
  std::vector<std::string> skipped;
  Dataset d = load_image_folder(root(), {}, &skipped);
  EXPECT_EQ(d.size(), 1);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_THAT(skipped[0], HasSubstr("notes.txt"));
  ImageFolderOptions strict;
  strict.strict = true;
  EXPECT_THAT(
      [&] { load_image_folder(root(), strict); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("notes.txt: cannot decode")));
}

/// A folder of textured images of mixed sizes and channels, PNG and JPEG.
void add_textured(const fs::path& root) {
  const std::vector<std::tuple<std::string, int64_t, int64_t, int64_t>> files = {
      {"cat/a.png", 3, 20, 24},
      {"cat/b.jpg", 3, 31, 17},
      {"dog/c.png", 1, 12, 12},
      {"dog/d.png", 3, 40, 30},
      {"dog/e.jpg", 1, 16, 16},
      {"eel/f.png", 3, 9, 33}};
  for (const auto& [name, c, h, w] : files) {
    fs::create_directories((root / name).parent_path());
    write_image((root / name).string(), torch::randint(0, 256, {c, h, w}, torch::kUInt8));
  }
}

TEST_F(ImageFolderTest, ASetOverTheMemoryLimitIsReadFromItsFilesWithTheSamePixels) {
  add_textured(dir_ / "root");
  ImageFolderOptions packed;
  packed.height = 14;
  packed.width = 18;
  ImageFolderOptions lazy = packed;
  lazy.memory_limit = 1000;  // bytes: 6 images of 14x18x3 take 4,536
  const Dataset a = load_image_folder(root(), packed);
  const Dataset b = load_image_folder(root(), lazy);
  ASSERT_TRUE(a.in_memory());
  ASSERT_FALSE(b.in_memory());
  EXPECT_EQ(b.size(), 6);
  EXPECT_EQ(b.channels(), 3);
  EXPECT_EQ(b.height(), 14);
  EXPECT_EQ(b.width(), 18);
  EXPECT_TRUE(torch::equal(a.labels, b.labels));
  // The same decoder and the same resize: the same bytes, item by item.
  for (int64_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a.image(i), b.image(i))) << i;
  }
  // Subsets and normalization agree too.
  const Dataset a2 = subset(a, {5, 0, 3}), b2 = subset(b, {5, 0, 3});
  EXPECT_TRUE(torch::equal(a2.image(0), b2.image(0)));
  EXPECT_EQ(b2.files.paths[0], b.files.paths[5]);
  const Normalization na = compute_normalization(a), nb = compute_normalization(b);
  EXPECT_EQ(na.mean, nb.mean);
  EXPECT_EQ(na.std, nb.std);
}

TEST_F(ImageFolderTest, ALazySetStillRefusesMixedSizesAndSkipsWhatItCannotRead) {
  add("a", "small.png", 1, 4, 4, 0);
  add("a", "large.png", 1, 8, 6, 0);
  std::ofstream((dir_ / "root" / "a" / "notes.txt").string()) << "not an image";
  ImageFolderOptions lazy;
  lazy.memory_limit = 10;
  EXPECT_THAT(
      [&] { load_image_folder(root(), lazy); },
      ::testing::ThrowsMessage<InputError>(
          AllOf(HasSubstr("2 different sizes"), HasSubstr("4x4"), HasSubstr("8x6"))));
  lazy.height = 4;
  lazy.width = 4;
  std::vector<std::string> skipped;
  const Dataset d = load_image_folder(root(), lazy, &skipped);
  EXPECT_FALSE(d.in_memory());
  EXPECT_EQ(d.size(), 2);
  EXPECT_EQ(d.channels(), 1);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_THAT(skipped[0], HasSubstr("notes.txt"));
  // A file that goes bad after listing fails the batch that reads it, naming it.
  std::ofstream((dir_ / "root" / "a" / "large.png").string()) << "gone";
  EXPECT_THAT(
      [&] { d.image(0); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("large.png: cannot decode")));
}

TEST_F(ImageFolderTest, RefusesAnEmptyClassFolder) {
  add("a", "good.png", 1, 4, 4, 0);
  fs::create_directories(dir_ / "root" / "empty");
  EXPECT_THAT(
      [&] { load_image_folder(root(), {}); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("empty: empty class folder")));
}

TEST_F(ImageFolderTest, TrainAndTestFoldersAreFoundByLoadData) {
  fs::create_directories(dir_ / "set" / "train" / "x");
  fs::create_directories(dir_ / "set" / "test" / "x");
  write_image(
      (dir_ / "set" / "train" / "x" / "1.png").string(), torch::zeros({1, 3, 3}, torch::kUInt8));
  write_image(
      (dir_ / "set" / "train" / "x" / "2.png").string(), torch::zeros({1, 3, 3}, torch::kUInt8));
  write_image(
      (dir_ / "set" / "test" / "x" / "3.png").string(), torch::zeros({1, 3, 3}, torch::kUInt8));
  const std::string set = (dir_ / "set").string();
  EXPECT_EQ(load_data(set, "train", {}).size(), 2);
  EXPECT_EQ(load_data(set, "test", {}).size(), 1);
  EXPECT_TRUE(has_test_split(set));
}

}  // namespace
}  // namespace patchwise
