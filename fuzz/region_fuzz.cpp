// Large-image readers on arbitrary bytes: TIFF (pyramidal or not), PNG, JPEG and the
// rest through every reader (OpenSlide, patchwise's JPEG-tile TIFF reader, libvips),
// then what tiling does with an image: the thumbnail, the levels, a few regions, a
// resized read (the decoder's DCT scaling) and the background filter.
#include "fuzz_support.h"
#include "patchwise/data/region.h"
#include "patchwise/patch/tiles.h"

namespace {

using patchwise::Box;
using patchwise::RegionReader;

/// Everything tiling reads from an image, bounded so a huge declared size costs nothing.
void exercise(const RegionReader& reader) {
  reader.thumbnail(64);
  for (int l = 0; l < static_cast<int>(reader.levels().size()); ++l) {
    const auto& level = reader.levels()[static_cast<size_t>(l)];
    const int64_t w = std::min<int64_t>(level.width, 48), h = std::min<int64_t>(level.height, 48);
    reader.read({0, 0, w, h}, l);
    reader.read({level.width - w, level.height - h, w, h}, l);
    const int64_t side = std::max<int64_t>(1, std::min(w, h) / 8);
    reader.read_resized({0, 0, std::min(w, h), std::min(w, h)}, l, side);
  }
  patchwise::TileOptions options;
  options.tile = std::max<int64_t>(1, std::min(reader.width(), reader.height()) / 2);
  patchwise::plan_tiles(reader, options);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace patchwise;
  const std::string path = fuzz::write_input("input.tif", data, size);
  for (const std::string& name : region_reader_names()) {
    fuzz::expect_accept_or_refuse([&] {
      // At most 4 million pixels decoded whole: the fuzzer's memory limit stays far away.
      auto reader = open_region_reader(path, {name, 4'000'000});
      if (reader->width() * reader->height() <= 4'000'000) exercise(*reader);
    });
  }
  return 0;
}
