#include "patchwise/data/region.h"

#include <fmt/ranges.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <opencv2/imgproc.hpp>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/data/image.h"
#include "region_readers.h"

namespace patchwise {
namespace {

using Opener =
    std::function<std::unique_ptr<RegionReader>(const std::string&, const RegionReaderOptions&)>;

struct ReaderEntry {
  const char* name;
  Opener open;
};

/// The readers, in the order they are tried.
const std::vector<ReaderEntry>& reader_table() {
  static const std::vector<ReaderEntry> table = {
      {"openslide", detail::open_openslide},
      {"tiff", detail::open_tiff},
      {"vips", detail::open_vips},
  };
  return table;
}

/// Refuses what is not a non-empty regular file, naming what it is.
void check_regular_file(const std::string& path) {
  check_readable_file(path, "image file");
  check_input(std::filesystem::file_size(path) > 0, "{}: empty file, expected an image", path);
}

class MemoryReader : public RegionReader {
 public:
  MemoryReader(at::Tensor image, const std::string& name) : image_(std::move(image)) {
    check_input(
        image_.dim() == 3 && image_.scalar_type() == at::kByte &&
            (image_.size(0) == 1 || image_.size(0) == 3) && image_.size(1) > 0 &&
            image_.size(2) > 0,
        "{}: expected a uint8 [C,H,W] image with 1 or 3 channels, got {}",
        name,
        fmt::join(image_.sizes(), "x"));
    path_ = name;
    format_ = "memory";
    channels_ = image_.size(0);
    levels_ = {{image_.size(2), image_.size(1), 1.0}};
  }

 protected:
  at::Tensor read_region(const Box& b, int) const override {
    return image_.narrow(1, b.y, b.h).narrow(2, b.x, b.w).permute({1, 2, 0}).contiguous();
  }

 private:
  at::Tensor image_;
};

/// The side lengths of `w` x `h` scaled so that the longer one is `max_side`.
std::pair<int64_t, int64_t> fit(int64_t w, int64_t h, int64_t max_side) {
  if (std::max(w, h) <= max_side) return {w, h};
  const double s = static_cast<double>(max_side) / static_cast<double>(std::max(w, h));
  return {std::max<int64_t>(1, std::llround(w * s)), std::max<int64_t>(1, std::llround(h * s))};
}

}  // namespace

at::Tensor RegionReader::read(const Box& box, int level) const {
  check_box(box, level);
  return read_region(box, level).permute({2, 0, 1}).contiguous();
}

at::Tensor RegionReader::read_resized(const Box& box, int level, int64_t side) const {
  check_box(box, level);
  at::Tensor hwc = read_region_reduced(box, level, side);
  const int64_t h = hwc.size(0), w = hwc.size(1);
  if (w != side || h != side) {
    const int channels = static_cast<int>(hwc.size(2));
    cv::Mat in(static_cast<int>(h), static_cast<int>(w), CV_8UC(channels), hwc.data_ptr<uint8_t>());
    at::Tensor out = torch::empty({side, side, channels}, torch::kUInt8);
    cv::Mat resized(
        static_cast<int>(side), static_cast<int>(side), CV_8UC(channels), out.data_ptr<uint8_t>());
    cv::resize(
        in,
        resized,
        resized.size(),
        0,
        0,
        side < w || side < h ? cv::INTER_AREA : cv::INTER_LINEAR);
    hwc = out;
  }
  return hwc.permute({2, 0, 1}).contiguous();
}

void RegionReader::check_box(const Box& box, int level) const {
  check_input(
      level >= 0 && level < static_cast<int>(levels_.size()),
      "{}: level {}, expected 0..{} (the image has {} level{})",
      path_,
      level,
      levels_.size() - 1,
      levels_.size(),
      levels_.size() == 1 ? "" : "s");
  const PyramidLevel& l = levels_[static_cast<size_t>(level)];
  check_input(
      box.w > 0 && box.h > 0 && box.x >= 0 && box.y >= 0 && box.x + box.w <= l.width &&
          box.y + box.h <= l.height,
      "{}: region {}x{} at ({}, {}), expected a non-empty box inside level {} ({}x{})",
      path_,
      box.w,
      box.h,
      box.x,
      box.y,
      level,
      l.width,
      l.height);
}

at::Tensor RegionReader::thumbnail(int64_t max_side) const {
  check_input(max_side > 0, "{}: thumbnail size {}, expected a positive number", path_, max_side);
  // The smallest level whose longer side still reaches max_side.
  int level = 0;
  for (size_t i = 1; i < levels_.size(); ++i) {
    if (std::max(levels_[i].width, levels_[i].height) >= max_side) level = static_cast<int>(i);
  }
  const PyramidLevel& l = levels_[static_cast<size_t>(level)];
  const auto [out_w, out_h] = fit(l.width, l.height, max_side);
  // Bands of rows, so that a level without a smaller one is never read whole.
  constexpr int64_t kBandPixels = int64_t{1} << 22;  // 12 MB of RGB a band
  const int64_t band_rows = std::max<int64_t>(1, kBandPixels / std::max<int64_t>(1, l.width));
  const int64_t out_band = std::max<int64_t>(1, band_rows * out_h / l.height);
  std::vector<at::Tensor> bands;
  for (int64_t r = 0; r < out_h; r += out_band) {
    const int64_t r_end = std::min(out_h, r + out_band);
    const int64_t y0 = r * l.height / out_h;
    const int64_t y1 = r_end == out_h ? l.height : r_end * l.height / out_h;
    at::Tensor band = read({0, y0, l.width, std::max<int64_t>(1, y1 - y0)}, level);
    bands.push_back(resize_image(band, r_end - r, out_w));
  }
  return torch::cat(bands, 1);
}

std::unique_ptr<RegionReader> open_region_reader(
    const std::string& path, const RegionReaderOptions& options) {
  check_regular_file(path);
  std::vector<std::string> names = region_reader_names();
  check_input(
      options.reader.empty() ||
          std::find(names.begin(), names.end(), options.reader) != names.end(),
      "reader '{}', expected one of: {}",
      options.reader,
      fmt::join(names, ", "));
  for (const ReaderEntry& entry : reader_table()) {
    if (!options.reader.empty() && options.reader != entry.name) continue;
    if (auto reader = entry.open(path, options)) return reader;
  }
  throw InputError(fmt::format(
      "{}: not an image that {} can read",
      path,
      options.reader.empty() ? fmt::format("{}", fmt::join(names, " or ")) : options.reader));
}

std::unique_ptr<RegionReader> memory_region_reader(at::Tensor image, const std::string& name) {
  return std::make_unique<MemoryReader>(std::move(image), name);
}

std::vector<std::string> region_reader_names() {
  std::vector<std::string> names;
  for (const ReaderEntry& e : reader_table()) names.emplace_back(e.name);
  return names;
}

}  // namespace patchwise
