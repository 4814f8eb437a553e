// The OpenSlide reader: whole-slide formats and generic tiled TIFF, region by region.

#include <openslide.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>

#include "patchwise/base/error.h"
#include "region_readers.h"

namespace patchwise::detail {
namespace {

/// A property as a positive number, or NaN.
double positive_property(openslide_t* slide, const char* name) {
  const char* text = openslide_get_property_value(slide, name);
  if (text == nullptr) return std::nan("");
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  return end != text && std::isfinite(v) && v > 0 ? v : std::nan("");
}

class OpenSlideReader : public RegionReader {
 public:
  OpenSlideReader(openslide_t* slide, const std::string& path, const char* vendor)
      : owner_(slide, &openslide_close), slide_(slide) {
    path_ = path;
    format_ = fmt::format("openslide ({})", vendor);
    channels_ = 3;
    check_error();
    const int32_t count = openslide_get_level_count(slide_);
    check_input(count > 0, "{}: OpenSlide found no levels", path_);
    for (int32_t i = 0; i < count; ++i) {
      int64_t w = 0, h = 0;
      openslide_get_level_dimensions(slide_, i, &w, &h);
      check_input(
          w > 0 && h > 0, "{}: level {} is {}x{}, expected a non-empty image", path_, i, w, h);
      levels_.push_back({w, h, openslide_get_level_downsample(slide_, i)});
    }
    const double x = positive_property(slide_, OPENSLIDE_PROPERTY_NAME_MPP_X);
    const double y = positive_property(slide_, OPENSLIDE_PROPERTY_NAME_MPP_Y);
    mpp_ = std::isnan(x) ? y : std::isnan(y) ? x : (x + y) / 2;
    if (std::isnan(mpp_)) mpp_ = tiff_mpp();
  }

 protected:
  at::Tensor read_region(const Box& b, int level) const override {
    const double ds = levels_[static_cast<size_t>(level)].downsample;
    std::vector<uint32_t> argb(static_cast<size_t>(b.w * b.h));
    openslide_read_region(
        slide_, argb.data(), std::llround(b.x * ds), std::llround(b.y * ds), level, b.w, b.h);
    check_error();
    return to_rgb(argb, b.w, b.h);
  }

 private:
  /// A generic TIFF's resolution tags as microns per pixel (OpenSlide 3.4 states no mpp
  /// for them), or NaN.
  double tiff_mpp() const {
    const char* unit = openslide_get_property_value(slide_, "tiff.ResolutionUnit");
    const double x = positive_property(slide_, "tiff.XResolution");
    const double y = positive_property(slide_, "tiff.YResolution");
    if (unit == nullptr || std::isnan(x) || std::isnan(y)) return std::nan("");
    const double microns = std::string(unit) == "centimeter" ? 1e4
                           : std::string(unit) == "inch"     ? 25400
                                                             : std::nan("");
    return microns * (1 / x + 1 / y) / 2;
  }

  void check_error() const {
    const char* error = openslide_get_error(slide_);
    check_input(error == nullptr, "{}: OpenSlide: {}", path_, error ? error : "");
  }

  /// Premultiplied ARGB to interleaved RGB [h, w, 3]; fully transparent pixels are white.
  static at::Tensor to_rgb(const std::vector<uint32_t>& argb, int64_t w, int64_t h) {
    at::Tensor out = torch::empty({h, w, 3}, torch::kUInt8);
    uint8_t* rgb = out.data_ptr<uint8_t>();
    for (size_t i = 0; i < argb.size(); ++i, rgb += 3) {
      const uint32_t p = argb[i];
      const uint32_t a = p >> 24;
      uint32_t r = (p >> 16) & 0xff, g = (p >> 8) & 0xff, b = p & 0xff;
      if (a == 0) {
        r = g = b = 255;
      } else if (a != 255) {
        r = std::min<uint32_t>(255, (r * 255 + a / 2) / a);
        g = std::min<uint32_t>(255, (g * 255 + a / 2) / a);
        b = std::min<uint32_t>(255, (b * 255 + a / 2) / a);
      }
      rgb[0] = static_cast<uint8_t>(r);
      rgb[1] = static_cast<uint8_t>(g);
      rgb[2] = static_cast<uint8_t>(b);
    }
    return out;
  }

  std::unique_ptr<openslide_t, void (*)(openslide_t*)> owner_;  // closed even when the
                                                                // constructor throws
  openslide_t* slide_;
};

}  // namespace

std::unique_ptr<RegionReader> open_openslide(
    const std::string& path, const RegionReaderOptions& options) {
  const char* vendor = openslide_detect_vendor(path.c_str());
  if (vendor == nullptr) return nullptr;
  // Generic TIFF goes to libvips unless OpenSlide is asked for: Debian's OpenSlide 3.4.1
  // misreads deflate- and LZW-compressed levels smaller than one tile.
  if (std::string(vendor) == "generic-tiff" && options.reader != "openslide") return nullptr;
  check_tiff_layout(path);
  openslide_t* slide = openslide_open(path.c_str());
  check_input(
      slide != nullptr, "{}: OpenSlide recognizes it as {} but cannot open it", path, vendor);
  return std::make_unique<OpenSlideReader>(slide, path, vendor);
}

}  // namespace patchwise::detail
