#include "patchwise/data/image_folder.h"

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>

#include "patchwise/core/error.h"
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
  void add(const std::string& cls, const std::string& name, int64_t channels, int64_t h, int64_t w,
           int value) {
    fs::create_directories(dir_ / "root" / cls);
    write_image((dir_ / "root" / cls / name).string(),
                torch::full({channels, h, w}, value, torch::kUInt8));
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
  EXPECT_THAT([&] { load_image_folder(root(), {}); },
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
  EXPECT_THAT([&] { load_image_folder(root(), strict); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("notes.txt: cannot decode")));
}

TEST_F(ImageFolderTest, RefusesAnEmptyClassFolder) {
  add("a", "good.png", 1, 4, 4, 0);
  fs::create_directories(dir_ / "root" / "empty");
  EXPECT_THAT([&] { load_image_folder(root(), {}); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("empty: empty class folder")));
}

TEST_F(ImageFolderTest, TrainAndTestFoldersAreFoundByLoadData) {
  fs::create_directories(dir_ / "set" / "train" / "x");
  fs::create_directories(dir_ / "set" / "test" / "x");
  write_image((dir_ / "set" / "train" / "x" / "1.png").string(), torch::zeros({1, 3, 3}, torch::kUInt8));
  write_image((dir_ / "set" / "train" / "x" / "2.png").string(), torch::zeros({1, 3, 3}, torch::kUInt8));
  write_image((dir_ / "set" / "test" / "x" / "3.png").string(), torch::zeros({1, 3, 3}, torch::kUInt8));
  const std::string set = (dir_ / "set").string();
  EXPECT_EQ(load_data(set, "train", {}).size(), 2);
  EXPECT_EQ(load_data(set, "test", {}).size(), 1);
  EXPECT_TRUE(has_test_split(set));
}

}  // namespace
}  // namespace patchwise
