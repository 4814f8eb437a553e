// Region readers: OpenSlide and libvips read the same pixels of a pyramidal tiled
// TIFF made here, at level 0 and level 1; bad files are refused with one line.

#include "patchwise/data/region.h"

#include <gmock/gmock.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <fstream>

#include "patchwise/base/error.h"
#include "patchwise/data/image.h"
#include "support/slide_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

class RegionTest : public test::SeededTest {
 protected:
  void SetUp() override {
    SeededTest::SetUp();
    image_ = test::synthetic_slide();
    tiff_ = path("slide.tif");
    write_pyramid_tiff(tiff_, image_, {256, /*mpp=*/0.5});
  }
  at::Tensor image_;
  std::string tiff_;
};

using test::input_error;

TEST_F(RegionTest, EveryReaderSeesThePyramidOfTheTiff) {
  // The tiff reader takes JPEG tiles only: it gets the same image with JPEG tiles.
  write_pyramid_tiff(path("jpeg.tif"), image_, {256, /*mpp=*/0.5, 90});
  for (const std::string name : {"openslide", "tiff", "vips"}) {
    auto reader = open_region_reader(name == "tiff" ? path("jpeg.tif") : tiff_, {name, 0});
    EXPECT_THAT(reader->format(), HasSubstr(name));
    EXPECT_EQ(reader->width(), 2048);
    EXPECT_EQ(reader->height(), 1536);
    EXPECT_EQ(reader->channels(), 3);
    ASSERT_GE(reader->levels().size(), 3u) << name;
    EXPECT_EQ(reader->levels()[1].width, 1024);
    EXPECT_EQ(reader->levels()[1].height, 768);
    EXPECT_NEAR(reader->levels()[1].downsample, 2.0, 1e-9);
    EXPECT_NEAR(reader->mpp(), 0.5, 1e-3) << name;
  }
  // A generic TIFF goes to patchwise's reader when its tiles are JPEG, else to libvips,
  // unless OpenSlide is asked for.
  EXPECT_EQ(open_region_reader(path("jpeg.tif"))->format(), "tiff (JPEG tiles)");
  EXPECT_EQ(open_region_reader(tiff_)->format(), "vips (tiffload)");
  EXPECT_EQ(open_region_reader(tiff_, {"openslide", 0})->format(), "openslide (generic-tiff)");
  EXPECT_THAT(
      input_error([&] {
        open_region_reader(tiff_, {"tiff", 0});
      }),
      HasSubstr("slide.tif: not an image that tiff can read"));
}

TEST_F(RegionTest, Level0RegionsAreTheImagesPixelsInBothReaders) {
  auto slide = open_region_reader(tiff_, {"openslide", 0});
  auto vips = open_region_reader(tiff_, {"vips", 0});
  auto memory = memory_region_reader(image_, "memory");
  // Boxes inside one TIFF tile, across tile borders, at the image's edges.
  for (const Box b :
       {Box{300, 300, 64, 64},
        Box{200, 250, 333, 129},
        Box{0, 0, 2048, 7},
        Box{2047, 1535, 1, 1},
        Box{1900, 1400, 148, 136}}) {
    const at::Tensor expected = image_.narrow(1, b.y, b.h).narrow(2, b.x, b.w);
    EXPECT_TRUE(torch::equal(slide->read(b), expected)) << b.x << "," << b.y;
    EXPECT_TRUE(torch::equal(vips->read(b), expected)) << b.x << "," << b.y;
    EXPECT_TRUE(torch::equal(memory->read(b), expected)) << b.x << "," << b.y;
  }
}

TEST_F(RegionTest, Level1RegionsAgreeAndAreTheHalvedImage) {
  auto slide = open_region_reader(tiff_, {"openslide", 0});
  auto vips = open_region_reader(tiff_, {"vips", 0});
  const Box b{100, 90, 300, 200};
  const at::Tensor a = slide->read(b, 1);
  const at::Tensor c = vips->read(b, 1);
  // Both decode the same stored level: the same bytes.
  EXPECT_TRUE(torch::equal(a, c));
  // The stored level is a 2x2 box average of level 0 (libvips' pyramid), rounded: within
  // one grey level of the exact average.
  const at::Tensor halved = torch::avg_pool2d(image_.to(torch::kFloat).unsqueeze(0), 2).squeeze(0);
  const at::Tensor expected = halved.narrow(1, b.y, b.h).narrow(2, b.x, b.w);
  EXPECT_LE((a.to(torch::kFloat) - expected).abs().max().item<float>(), 1.0f);
}

TEST_F(RegionTest, JpegTilesDecodeAlikeInEveryReaderAtEveryLevel) {
  // As scanners write them; OpenSlide and patchwise's tiff reader decode the JPEG
  // themselves, libvips through libtiff.
  write_pyramid_tiff(path("jpeg.tif"), image_, {256, 0, 90});
  auto slide = open_region_reader(path("jpeg.tif"), {"openslide", 0});
  auto tiff = open_region_reader(path("jpeg.tif"), {"tiff", 0});
  auto vips = open_region_reader(path("jpeg.tif"), {"vips", 0});
  ASSERT_EQ(slide->levels().size(), vips->levels().size());
  ASSERT_EQ(tiff->levels().size(), vips->levels().size());
  for (int l = 0; l < static_cast<int>(slide->levels().size()); ++l) {
    const PyramidLevel& level = slide->levels()[static_cast<size_t>(l)];
    const Box all{0, 0, level.width, level.height};
    const at::Tensor a = slide->read(all, l).to(torch::kInt);
    const at::Tensor b = vips->read(all, l).to(torch::kInt);
    const at::Tensor c = tiff->read(all, l).to(torch::kInt);
    // The same coefficients through two IDCTs: equal, or off by a rounding step.
    EXPECT_LE((a - b).abs().max().item<int>(), 2) << "level " << l;
    EXPECT_LE((c - b).abs().max().item<int>(), 2) << "level " << l;
    // Boxes across tile borders and at the edges come from the right tiles.
    for (const Box box :
         {Box{level.width / 3, level.height / 4, level.width / 2, level.height / 2},
          Box{level.width - 5, level.height - 3, 5, 3}}) {
      EXPECT_TRUE(torch::equal(
          tiff->read(box, l).to(torch::kInt), c.narrow(1, box.y, box.h).narrow(2, box.x, box.w)))
          << "level " << l;
    }
  }
  // Level 0 against the source: JPEG at quality 90 of noisy squares stays close.
  const at::Tensor a = slide->read({256, 256, 512, 512}).to(torch::kFloat);
  const at::Tensor src = image_.narrow(1, 256, 512).narrow(2, 256, 512).to(torch::kFloat);
  EXPECT_LT((a - src).abs().mean().item<float>(), 12.0f);
}

TEST_F(RegionTest, GreyJpegTilesReadAsOneChannel) {
  write_pyramid_tiff(path("grey.tif"), image_.narrow(0, 1, 1).contiguous(), {256, 0, 90});
  auto tiff = open_region_reader(path("grey.tif"), {"tiff", 0});
  auto vips = open_region_reader(path("grey.tif"), {"vips", 0});
  EXPECT_EQ(tiff->channels(), 1);
  const Box b{100, 200, 700, 500};
  EXPECT_LE(
      (tiff->read(b).to(torch::kInt) - vips->read(b).to(torch::kInt)).abs().max().item<int>(), 2);
}

TEST_F(RegionTest, ShrinkingJpegTilesWhileDecodingGivesTheAreaAverage) {
  write_pyramid_tiff(path("jpeg.tif"), image_, {256, 0, 90});
  auto tiff = open_region_reader(path("jpeg.tif"), {"tiff", 0});
  auto vips = open_region_reader(path("jpeg.tif"), {"vips", 0});
  // Aligned boxes shrunk by a whole factor shrink by 8, 4 or 2 in the decoder (then by
  // area averaging of whole blocks to the side); the others decode in full. libvips
  // decodes in full and averages.
  for (const auto& [box, side] :
       {std::pair{Box{256, 256, 256, 256}, int64_t{32}},
        std::pair{Box{1280, 768, 512, 512}, int64_t{32}},
        std::pair{Box{640, 640, 256, 256}, int64_t{64}},
        std::pair{Box{640, 640, 256, 256}, int64_t{100}},
        std::pair{Box{253, 261, 250, 250}, int64_t{32}}}) {
    const at::Tensor a = tiff->read_resized(box, 0, side).to(torch::kFloat);
    const at::Tensor b = vips->read_resized(box, 0, side).to(torch::kFloat);
    ASSERT_EQ(a.sizes(), b.sizes());
    // The DC coefficient is 8 times the block's mean, so luma agrees up to the two
    // roundings to uint8 on each side (decode, resize): at most 2. Chroma is stored at
    // half resolution and upsampled after scaling instead of before, which moves a pixel
    // where the colour changes (the squares' edges) by a little more; 4 in all, and on
    // average far less (measured: at most 1, on average 0.1).
    const float mean = (a - b).abs().mean().item<float>();
    EXPECT_LT(mean, 0.5f) << box.x << "," << box.y << " -> " << side;
    EXPECT_LE((a - b).abs().max().item<float>(), 4.0f) << box.x << "," << box.y;
    EXPECT_GT(a.std().item<float>(), 10.0f) << "the box should hold a square's texture";
  }
}

TEST_F(RegionTest, ThumbnailsKeepTheAspectAndTheContent) {
  write_pyramid_tiff(path("jpeg.tif"), image_, {256, 0, 95});
  for (const std::string name : {"openslide", "vips"}) {
    auto reader = open_region_reader(name == "vips" ? tiff_ : path("jpeg.tif"), {name, 0});
    const at::Tensor t = reader->thumbnail(256);
    ASSERT_EQ(t.sizes(), (std::vector<int64_t>{3, 192, 256})) << name;
    // An area average of 8x8 blocks of the image; edges of the squares may differ more.
    const at::Tensor expected =
        torch::avg_pool2d(image_.to(torch::kFloat).unsqueeze(0), 8).squeeze(0);
    const at::Tensor diff = (t.to(torch::kFloat) - expected).abs();
    EXPECT_LT(diff.mean().item<float>(), 3.0f) << name;
  }
  auto memory = memory_region_reader(image_, "memory");
  EXPECT_EQ(memory->thumbnail(4096).sizes(), image_.sizes());  // never enlarged
}

TEST_F(RegionTest, AGreyPngIsReadByVipsAsOneChannel) {
  const at::Tensor grey = image_.narrow(0, 1, 1).narrow(1, 0, 300).narrow(2, 0, 400).contiguous();
  write_image(path("grey.png"), grey);
  auto reader = open_region_reader(path("grey.png"));
  EXPECT_EQ(reader->format(), "vips (pngload)");
  EXPECT_EQ(reader->channels(), 1);
  EXPECT_EQ(reader->levels().size(), 1u);
  EXPECT_TRUE(std::isnan(reader->mpp()));
  EXPECT_TRUE(
      torch::equal(reader->read({10, 20, 30, 40}), grey.narrow(1, 20, 40).narrow(2, 10, 30)));
}

TEST_F(RegionTest, BadFilesAndBoxesAreInputErrors) {
  auto reader = open_region_reader(tiff_);
  EXPECT_THAT(
      input_error([&] {
        reader->read({2000, 0, 100, 10});
      }),
      HasSubstr("region 100x10 at (2000, 0), expected a non-empty box inside level 0 "
                "(2048x1536)"));
  EXPECT_THAT(input_error([&] { reader->read({0, 0, 0, 10}); }), HasSubstr("non-empty box"));
  EXPECT_THAT(
      input_error([&] {
        reader->read({0, 0, 10, 10}, 9);
      }),
      HasSubstr(": level 9, expected 0.."));

  EXPECT_THAT(
      input_error([&] { open_region_reader(path("none.tif")); }),
      HasSubstr("none.tif: no such image file"));
  EXPECT_THAT(
      input_error([&] { open_region_reader(dir_.string()); }),
      HasSubstr("expected an image file, found a directory"));
  ASSERT_EQ(mkfifo(path("fifo").c_str(), 0600), 0);
  EXPECT_THAT(
      input_error([&] { open_region_reader(path("fifo")); }),
      HasSubstr("fifo: expected an image file, found a FIFO"));
  std::ofstream(path("empty.png")).close();
  EXPECT_THAT(
      input_error([&] { open_region_reader(path("empty.png")); }),
      HasSubstr("empty.png: empty file, expected an image"));
  std::ofstream(path("notes.txt")) << "just some words, no pixels\n";
  EXPECT_THAT(
      input_error([&] { open_region_reader(path("notes.txt")); }),
      HasSubstr("notes.txt: not an image that openslide or tiff or vips can read"));
  EXPECT_THAT(
      input_error([&] {
        open_region_reader(tiff_, {"gdal", 0});
      }),
      HasSubstr("reader 'gdal', expected one of: openslide, tiff, vips"));
}

/// A 1 KB strip TIFF whose one strip declares width x height bytes, far beyond the file.
std::string strip_beyond_the_file(uint32_t width, uint32_t height) {
  const auto u16 = [](uint16_t v) { return std::string{char(v & 255), char(v >> 8)}; };
  const auto u32 = [&](uint32_t v) { return u16(uint16_t(v & 0xffff)) + u16(uint16_t(v >> 16)); };
  const std::vector<std::tuple<uint16_t, uint16_t, uint32_t>> entries{
      {256, 4, width},
      {257, 4, height},
      {258, 3, 8},
      {259, 3, 1},
      {262, 3, 1},
      {273, 4, 200},
      {277, 3, 1},
      {278, 4, height},
      {279, 4, width * height},
      {284, 3, 1}};
  std::string out = "II*" + std::string(1, '\0') + u32(8) + u16(uint16_t(entries.size()));
  for (const auto& [tag, type, value] : entries) {
    out += u16(tag) + u16(type) + u32(1) + (type == 3 ? u16(uint16_t(value)) + u16(0) : u32(value));
  }
  out += u32(0);
  return out + std::string(1024 - out.size(), '\0');
}

// The readers that take strip TIFFs, and the whole-image decoder, refuse a strip declared
// larger than the file from its header, naming it, before allocating what it declares
// (libvips took 694 MB). libtiff cuts the one strip into rows of 40,000 bytes.
TEST_F(RegionTest, AStripDeclaredLargerThanTheFileIsRefusedFromTheHeader) {
  std::ofstream(path("strip.tif"), std::ios::binary) << strip_beyond_the_file(40000, 60000);
  const std::string refusal = "strip.tif: page 0 declares a tile or strip of 40000 bytes";
  for (const std::string name : {"vips", ""}) {
    EXPECT_THAT(
        input_error([&] {
          open_region_reader(path("strip.tif"), {name, 0});
        }),
        HasSubstr(refusal))
        << name;
  }
  EXPECT_THAT(input_error([&] { read_image(path("strip.tif"), 1); }), HasSubstr(refusal));
}

TEST_F(RegionTest, ATruncatedTiffFailsWithOneLineNotACrash) {
  write_pyramid_tiff(path("jpeg.tif"), image_, {256, 0, 90});
  for (const std::string& source : {tiff_, path("jpeg.tif")}) {
    const std::string bytes = test::read_file(source);
    for (const double keep : {0.02, 0.3, 0.6, 0.9}) {
      const std::string cut = path("cut.tif");
      std::ofstream(cut, std::ios::binary)
          << bytes.substr(0, static_cast<size_t>(static_cast<double>(bytes.size()) * keep));
      for (const std::string name : {"openslide", "tiff", "vips", ""}) {
        const std::string message = input_error([&] {
          auto r = open_region_reader(cut, {name, 0});
          for (int l = 0; l < static_cast<int>(r->levels().size()); ++l) {
            r->read({0, 0, r->levels()[l].width, r->levels()[l].height}, l);
          }
        });
        // Refused at open or at the first read of a missing tile, naming the file. Cut
        // at 90 %, only the smallest levels are lost: the file may read as a shorter
        // pyramid.
        if (keep < 0.8 || !message.empty()) {
          EXPECT_THAT(message, HasSubstr("cut.tif")) << keep << " " << name;
        }
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      }
    }
  }
}

TEST_F(RegionTest, ACorruptJpegTileIsAnErrorNamingTheTile) {
  write_pyramid_tiff(path("jpeg.tif"), image_, {256, 0, 90});
  std::string bytes = test::read_file(path("jpeg.tif"));
  // Overwrite the middle of the file, inside level 0's tile data, with marker bytes.
  std::fill_n(bytes.begin() + static_cast<std::ptrdiff_t>(bytes.size() / 3), 4096, '\xff');
  std::ofstream(path("bad.tif"), std::ios::binary) << bytes;
  auto reader = open_region_reader(path("bad.tif"), {"tiff", 0});
  const std::string message = input_error([&] { reader->read({0, 0, 2048, 1536}); });
  EXPECT_THAT(message, HasSubstr("bad.tif: tile "));
  EXPECT_THAT(message, HasSubstr("of level 0 (256x256 tiles)"));
  EXPECT_THAT(message, HasSubstr("expected a valid JPEG tile"));
}

/// A PNG whose header declares width x height pixels, followed by a few bytes of
/// image data (far too few) and the end chunk.
std::string png_header(uint32_t width, uint32_t height) {
  auto be32 = [](uint32_t v) {
    return std::string{
        static_cast<char>(v >> 24),
        static_cast<char>(v >> 16),
        static_cast<char>(v >> 8),
        static_cast<char>(v)};
  };
  auto chunk = [&](const std::string& type, const std::string& data) {
    const std::string body = type + data;
    const uLong crc =
        crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
    return be32(static_cast<uint32_t>(data.size())) + body + be32(static_cast<uint32_t>(crc));
  };
  Bytef packed[64];
  uLongf packed_size = sizeof packed;
  const Bytef row[4] = {0, 0, 0, 0};
  compress(packed, &packed_size, row, sizeof row);
  return std::string("\x89PNG\r\n\x1a\n", 8) +
         chunk("IHDR", be32(width) + be32(height) + std::string("\x08\x02\x00\x00\x00", 5)) +
         chunk("IDAT", std::string(reinterpret_cast<const char*>(packed), packed_size)) +
         chunk("IEND", "");
}

TEST_F(RegionTest, AnImageDecodedWholeBeyondTheLimitIsRefusedBeforeDecoding) {
  std::ofstream(path("huge.png"), std::ios::binary) << png_header(30000, 30000);
  EXPECT_THAT(
      input_error([&] { open_region_reader(path("huge.png")); }),
      HasSubstr("huge.png: 30000x30000 = 900000000 pixels, expected at most 100000000 "
                "(--max-pixels) for a pngload image"));
  // A tiled TIFF is read in regions: no limit applies.
  EXPECT_NO_THROW(open_region_reader(tiff_, {"vips", 1000}));
  // Images read whole through OpenCV (predict, image folders) are checked alike, from
  // the header libvips reads, or, for a truncated JPEG libvips refuses, its frame header.
  EXPECT_THAT(
      input_error([&] { read_image(path("huge.png")); }),
      HasSubstr("huge.png: 30000x30000 = 900000000 pixels, expected at most 100000000 for an "
                "image decoded whole"));
  const std::string jpeg = std::string("\xff\xd8\xff\xc0\x00\x11\x08", 7) +
                           std::string("\x59\xa6\x6a\x95\x03", 5) +  // 22950 x 27285, 3 parts
                           std::string("\x01\x22\x00\x02\x11\x01\x03\x11\x01", 9);
  // The same after a standalone marker (TEM: no length follows) that a scanner reading a
  // length there would skip the frame header by, and in bytes given to decode_image.
  const std::string tem = "\xff\xd8" + std::string("\xff\x01\x77\x3d", 4) + jpeg.substr(2);
  for (const std::string& bytes : {jpeg, tem}) {
    std::ofstream(path("huge.jpg"), std::ios::binary) << bytes;
    EXPECT_THAT(
        input_error([&] { read_image(path("huge.jpg")); }),
        HasSubstr("huge.jpg: 27285x22950 = 626190750 pixels, expected at most 100000000"));
    EXPECT_THAT(
        input_error([&] { decode_image(bytes, "upload", 3); }),
        HasSubstr("27285x22950 = 626190750 pixels"));
  }
}

}  // namespace
}  // namespace patchwise
