// CSV manifests: paths relative to the manifest, classes from the labels, splits, and
// one-line errors that name the line.

#include "patchwise/data/manifest.h"

#include <gmock/gmock.h>
#include <torch/torch.h>

#include <fstream>

#include "patchwise/base/error.h"
#include "patchwise/data/image.h"
#include "patchwise/data/source.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ManifestTest : public test::SeededTest {
 protected:
  void SetUp() override {
    SeededTest::SetUp();
    std::filesystem::create_directories(dir_ / "img" / "sub");
    for (int i = 0; i < 4; ++i) {
      write_image(
          path("img/" + std::to_string(i) + ".png"), torch::full({1, 6, 5}, 40 * i, torch::kUInt8));
    }
    write_image(path("img/sub/a, b.png"), torch::full({1, 6, 5}, 200, torch::kUInt8));
  }
  std::string manifest(const std::string& text) {
    std::ofstream(path("set.csv")) << text;
    return path("set.csv");
  }
  std::string error(const std::string& text, const std::string& split = "train") {
    const std::string m = manifest(text);
    try {
      read_manifest(m, split);
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  }
};

TEST_F(ManifestTest, ListsTheSplitWithClassesFromAllLabels) {
  const std::string m = manifest(
      "path,label,split\n"
      "# a comment, then a blank line\n"
      "\n"
      "img/0.png,tumour,train\n"
      "img/1.png , normal , train\r\n"
      "\"img/sub/a, b.png\",normal,test\n"
      "img/2.png,zebra,test\n");
  const SampleList train = read_manifest(m, "train");
  EXPECT_THAT(train.class_names, ElementsAre("normal", "tumour", "zebra"));
  EXPECT_THAT(train.labels, ElementsAre(1, 0));
  EXPECT_EQ(train.files[0], path("img/0.png"));
  const SampleList test = read_manifest(m, "test");
  EXPECT_EQ(test.class_names, train.class_names);
  EXPECT_THAT(test.labels, ElementsAre(0, 2));
  EXPECT_EQ(test.files[0], path("img/sub/a, b.png"));
  EXPECT_TRUE(manifest_has_test(m));
  EXPECT_TRUE(has_test_split(m));
}

// Excel writes a UTF-8 byte-order mark before the first byte: it belongs to no field, with
// or without the header line.
TEST_F(ManifestTest, AByteOrderMarkBeforeTheFirstLineIsSkipped) {
  const std::string bom = "\xEF\xBB\xBF";
  EXPECT_THAT(
      read_manifest(manifest(bom + "path,label\nimg/0.png,a\nimg/1.png,b\n"), "train").labels,
      ElementsAre(0, 1));
  const SampleList without_header = read_manifest(manifest(bom + "img/0.png,a\n"), "train");
  EXPECT_EQ(without_header.files[0], path("img/0.png"));
}

TEST_F(ManifestTest, LoadsThroughTheDataLayerAsPackedImages) {
  const std::string m = manifest(path("img/3.png") + ",b\nimg/1.png,a\nimg/2.png,a\n");
  EXPECT_FALSE(has_test_split(m));
  const Dataset d = load_data(m, "train", {});
  ASSERT_EQ(d.size(), 3);
  EXPECT_THAT(d.class_names, ElementsAre("a", "b"));
  EXPECT_TRUE(torch::equal(d.labels, torch::tensor({1, 0, 0}, torch::kInt64)));
  EXPECT_EQ(d.images[0][0][0][0].item<int>(), 120);  // img/3.png, by its absolute path
  DataOptions first;
  first.limit = 1;
  EXPECT_EQ(load_data(m, "train", first).size(), 1);  // --limit
}

TEST_F(ManifestTest, EveryMistakeNamesTheLineTheValueAndWhatWasExpected) {
  EXPECT_THAT(
      error("img/0.png,a\nimg/1.png\n"), HasSubstr("set.csv:2: 1 fields, expected path,label"));
  EXPECT_THAT(
      error("img/0.png,a,train\nimg/1.png,a\n"),
      HasSubstr("set.csv:2: 2 fields, expected path,label,split like the lines above"));
  EXPECT_THAT(
      error("img/0.png,a,validation\n"),
      HasSubstr("set.csv:1: split 'validation', expected train or test"));
  EXPECT_THAT(
      error("img/0.png,a\nimg/9.png,a\n"),
      HasSubstr("set.csv:2: 'img/9.png': no such file, expected an image file"));
  EXPECT_THAT(
      error("img,a\n"), HasSubstr("set.csv:1: 'img': expected an image file, found a directory"));
  EXPECT_THAT(error("img/0.png,\n"), HasSubstr("set.csv:1: empty label"));
  EXPECT_THAT(error(",a\n"), HasSubstr("set.csv:1: empty path"));
  EXPECT_THAT(error("\"img/0.png,a\n"), HasSubstr("set.csv:1: unclosed quote"));
  EXPECT_THAT(
      error("path,label,fold\nimg/0.png,a,1\n"),
      HasSubstr("set.csv:1: header 'path,label,fold', expected path,label[,split]"));
  EXPECT_THAT(error("# nothing\n\n"), HasSubstr("set.csv: no images listed"));
  EXPECT_THAT(error("img/0.png,a,train\n", "test"), HasSubstr("set.csv: no test images listed"));
  EXPECT_THAT(error(std::string("img/0.png,a\n\0x,y\n", 16)), HasSubstr("set.csv:2: a NUL byte"));
}

}  // namespace
}  // namespace patchwise
