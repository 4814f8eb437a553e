// Paths in messages, what a path is before anything opens it, and checked outputs.
#include "patchwise/base/files.h"

#include <gmock/gmock.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "patchwise/base/error.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class FilesTest : public test::SeededTest {};

TEST_F(FilesTest, PrintableEscapesControlBytesAndShortensLongValuesKeepingBothEnds) {
  EXPECT_EQ(printable("a\nb\tc\r"), "a\\nb\\tc\\r");
  EXPECT_EQ(printable(std::string("x\0y\x7f", 4)), "x\\x00y\\x7f");
  EXPECT_EQ(printable("Ankle boot/\xc3\xa9t\xc3\xa9.png"), "Ankle boot/\xc3\xa9t\xc3\xa9.png");
  EXPECT_EQ(printable("\xff\xfe"), "\\xff\\xfe");  // not UTF-8
  EXPECT_EQ(printable("\xc3"), "\\xc3");           // a sequence cut short
  const std::string path = "/data/" + std::string(10'000'000, 'a') + "/end.png";
  const std::string shown = printable(path);
  EXPECT_LT(shown.size(), 200u);
  EXPECT_EQ(shown.substr(0, 6), "/data/");
  EXPECT_THAT(shown, HasSubstr("/end.png (10000014 bytes)"));
}

TEST_F(FilesTest, WhatIsThereIsNamedWithoutOpeningIt) {
  EXPECT_EQ(not_a_regular_file(path("none")), "nothing");
  EXPECT_EQ(not_a_regular_file(dir_.string()), "a directory");
  EXPECT_EQ(not_a_regular_file("/dev/zero"), "a character device");
  ASSERT_EQ(::mkfifo(path("pipe").c_str(), 0600), 0);
  EXPECT_EQ(not_a_regular_file(path("pipe")), "a FIFO");  // returns: nothing opened it
  fs::create_symlink(path("b"), path("a"));
  fs::create_symlink(path("a"), path("b"));
  EXPECT_EQ(not_a_regular_file(path("a")), "a loop of symbolic links");
  std::ofstream(path("file")) << "x";
  EXPECT_EQ(not_a_regular_file(path("file")), "");
  EXPECT_EQ(
      not_a_regular_file(path("file") + "/below"), "a path through something that is not a folder");
}

TEST_F(FilesTest, ReadableAndWritableChecksNameThePathAndWhatWasFound) {
  ASSERT_EQ(::mkfifo(path("pipe").c_str(), 0600), 0);
  EXPECT_EQ(
      test::input_error([&] { check_readable_file(path("pipe"), "model file"); }),
      path("pipe") + ": expected a model file, found a FIFO");
  EXPECT_EQ(
      test::input_error([&] { check_readable_file(path("none"), "image file"); }),
      path("none") + ": no such image file");
  EXPECT_EQ(
      test::input_error([&] { check_readable_file(path("a\nb"), "image file"); }),
      path("a\\nb") + ": no such image file");
  EXPECT_EQ(
      test::input_error([&] { check_output_writable(path("pipe"), "--out"); }),
      "--out: " + path("pipe") + " is a FIFO, expected a file path");
  EXPECT_THAT(
      test::input_error([&] { check_output_writable(path("no/such/m.pw"), "--out"); }),
      HasSubstr("does not exist"));
  EXPECT_EQ(test::input_error([&] { check_output_writable(path("new.pw"), "--out"); }), "");
}

}  // namespace
}  // namespace patchwise
