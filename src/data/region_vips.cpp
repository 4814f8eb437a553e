// The libvips reader: PNG, JPEG, WebP, TIFF and the rest of what libvips loads.

#include <torch/torch.h>
#include <vips/vips.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "region_readers.h"

namespace patchwise::detail {
namespace {

/// Owns one reference to a VipsImage.
struct Unref {
  void operator()(VipsImage* image) const { g_object_unref(image); }
};
using Image = std::unique_ptr<VipsImage, Unref>;

/// Loaders that read a region without decoding the whole image.
bool reads_regions(const std::string& loader) {
  static const std::set<std::string> region = {"tiffload", "openslideload", "vipsload"};
  return region.count(loader) > 0;
}

/// `in` as uchar with 1 (grey) or 3 (sRGB) bands: alpha dropped, other spaces converted.
Image to_uchar(VipsImage* in, const std::string& path) {
  VipsImage* out = nullptr;
  const bool grey = vips_image_guess_interpretation(in) == VIPS_INTERPRETATION_B_W ||
                    vips_image_guess_interpretation(in) == VIPS_INTERPRETATION_GREY16;
  VipsImage* flat = nullptr;
  const int bands = vips_image_get_bands(in);
  const int keep = grey ? 1 : std::min(3, bands);
  if (vips_extract_band(in, &flat, 0, "n", keep, nullptr) != 0) {
    throw InputError(fmt::format("{}: cannot read its bands ({})", path, take_vips_error()));
  }
  Image owned_flat(flat);
  if (keep == 1 && !grey) {
    // One band that libvips does not call grey (e.g. a mask): read it as grey.
    if (vips_copy(flat, &out, "interpretation", VIPS_INTERPRETATION_B_W, nullptr) != 0) {
      throw InputError(fmt::format("{}: {}", path, take_vips_error()));
    }
    owned_flat.reset(out);
    flat = out;
  }
  VipsImage* converted = nullptr;
  const auto space = grey || keep == 1 ? VIPS_INTERPRETATION_B_W : VIPS_INTERPRETATION_sRGB;
  if (vips_colourspace(flat, &converted, space, nullptr) != 0) {
    throw InputError(fmt::format("{}: cannot convert its colours ({})", path, take_vips_error()));
  }
  Image owned_converted(converted);
  if (vips_image_get_format(converted) == VIPS_FORMAT_UCHAR) return owned_converted;
  if (vips_cast_uchar(converted, &out, nullptr) != 0) {
    throw InputError(fmt::format("{}: {}", path, take_vips_error()));
  }
  return Image(out);
}

/// The pixels of `image` as uint8 [C,H,W].
at::Tensor to_tensor(VipsImage* image, const std::string& path) {
  size_t size = 0;
  void* memory = vips_image_write_to_memory(image, &size);
  if (memory == nullptr) {
    throw InputError(fmt::format("{}: cannot decode ({})", path, take_vips_error()));
  }
  const int64_t h = vips_image_get_height(image), w = vips_image_get_width(image),
                c = vips_image_get_bands(image);
  at::Tensor hwc = torch::from_blob(
      memory, {h, w, c}, [](void* p) { g_free(p); }, torch::kUInt8);
  return hwc.permute({2, 0, 1}).contiguous();
}

/// Opens `path` for random access; `page` >= 0 picks a TIFF page (other loaders have none).
Image load(const std::string& path, int page) {
  vips_error_clear();
  VipsImage* image =
      page >= 0
          ? vips_image_new_from_file(
                path.c_str(),
                "access",
                VIPS_ACCESS_RANDOM,
                "fail_on",
                VIPS_FAIL_ON_ERROR,
                "page",
                page,
                nullptr)
          : vips_image_new_from_file(
                path.c_str(), "access", VIPS_ACCESS_RANDOM, "fail_on", VIPS_FAIL_ON_ERROR, nullptr);
  if (image == nullptr) {
    throw InputError(fmt::format("{}: cannot open ({})", path, take_vips_error()));
  }
  return Image(image);
}

class VipsReader : public RegionReader {
 public:
  VipsReader(
      const std::string& path, const std::string& loader, const RegionReaderOptions& options) {
    path_ = path;
    format_ = fmt::format("vips ({})", loader);
    Image first = load(path, loader == "tiffload" ? 0 : -1);
    const int64_t w = vips_image_get_width(first.get()), h = vips_image_get_height(first.get());
    check_input(w > 0 && h > 0, "{}: {}x{} pixels, expected a non-empty image", path, w, h);
    check_input(
        reads_regions(loader) || options.max_pixels <= 0 || w * h <= options.max_pixels,
        "{}: {}x{} = {} pixels, expected at most {} (--max-pixels) for a {} image, which "
        "must be decoded whole; a tiled TIFF is read in regions",
        path,
        w,
        h,
        w * h,
        options.max_pixels,
        loader);
    const double xres = vips_image_get_xres(first.get());  // pixels per millimetre
    const double yres = vips_image_get_yres(first.get());
    if (vips_image_get_typeof(first.get(), "resolution-unit") != 0 && xres > 1 && yres > 1) {
      mpp_ = 1000.0 * (1 / xres + 1 / yres) / 2;
    }
    levels_.push_back({w, h, 1.0});
    pages_.push_back(to_uchar(first.get(), path));
    channels_ = vips_image_get_bands(pages_.front().get());
    add_pyramid_pages(loader);
  }

  at::Tensor thumbnail(int64_t max_side) const override {
    check_input(max_side > 0, "{}: thumbnail size {}, expected a positive number", path_, max_side);
    VipsImage* out = nullptr;
    // Shrink-on-load (JPEG, pyramidal TIFF pages), streaming the rest. Never enlarged;
    // not VIPS_SIZE_DOWN, which libvips 8.14 applies to the smallest pyramid page.
    const int side = static_cast<int>(std::min(max_side, std::max(width(), height())));
    if (vips_thumbnail(path_.c_str(), &out, side, "height", side, nullptr) != 0) {
      throw InputError(fmt::format("{}: cannot make a thumbnail ({})", path_, take_vips_error()));
    }
    Image owned(out);
    Image flat = to_uchar(out, path_);
    at::Tensor t = to_tensor(flat.get(), path_);
    return t.size(0) == channels_ ? t : t.narrow(0, 0, 1).expand({channels_, -1, -1}).contiguous();
  }

 protected:
  at::Tensor read_region(const Box& b, int level) const override {
    // A region computes just the box on this thread: no pipeline, no thread pool.
    vips_error_clear();
    VipsImage* page = pages_[static_cast<size_t>(level)].get();
    std::unique_ptr<VipsRegion, void (*)(VipsRegion*)> region(
        vips_region_new(page), [](VipsRegion* r) { g_object_unref(r); });
    VipsRect rect{
        static_cast<int>(b.x), static_cast<int>(b.y), static_cast<int>(b.w), static_cast<int>(b.h)};
    if (!region || vips_region_prepare(region.get(), &rect) != 0) {
      throw InputError(fmt::format(
          "{}: cannot read {}x{} at ({}, {}) of level {} ({})",
          path_,
          b.w,
          b.h,
          b.x,
          b.y,
          level,
          take_vips_error()));
    }
    const int64_t c = channels_;
    at::Tensor hwc = torch::empty({b.h, b.w, c}, torch::kUInt8);
    uint8_t* to = hwc.data_ptr<uint8_t>();
    for (int64_t y = 0; y < b.h; ++y) {
      const auto* from = reinterpret_cast<const uint8_t*>(
          VIPS_REGION_ADDR(region.get(), rect.left, rect.top + static_cast<int>(y)));
      std::memcpy(to + y * b.w * c, from, static_cast<size_t>(b.w * c));
    }
    return hwc;
  }

 private:
  /// The following pages of a TIFF whose sizes halve, page after page, are its levels.
  void add_pyramid_pages(const std::string& loader) {
    if (loader != "tiffload") return;
    const int pages = vips_image_get_n_pages(pages_.front().get());
    for (int p = 1; p < pages; ++p) {
      Image page = load(path_, p);
      const int64_t w = vips_image_get_width(page.get()), h = vips_image_get_height(page.get());
      const PyramidLevel& prev = levels_.back();
      const bool halves = std::abs(2 * w - prev.width) <= 1 && std::abs(2 * h - prev.height) <= 1;
      if (!halves) break;
      const double downsample = static_cast<double>(levels_.front().width) / static_cast<double>(w);
      levels_.push_back({w, h, downsample});
      pages_.push_back(to_uchar(page.get(), path_));
    }
  }

  std::vector<Image> pages_;  // one per level, already as uchar
};

}  // namespace

void ensure_vips() {
  static std::once_flag once;
  std::call_once(once, [] {
    setenv("VIPS_WARNING", "0", /*overwrite=*/0);  // errors come back as InputError
    if (VIPS_INIT("patchwise") != 0) {
      throw std::runtime_error("libvips failed to start: " + take_vips_error());
    }
    vips_cache_set_max(0);  // every read is a new crop: nothing worth caching
    // Only the loaders docs/large-images.md and docs/testing.md list (TIFF, PNG, JPEG, WebP, PNM):
    // libvips would also hand SVG, PDF and whatever ImageMagick decodes to libraries that were
    // never meant to see untrusted files, and that predict's decoder refuses.
    vips_block_untrusted_set(TRUE);
    vips_operation_block_set("VipsForeignLoad", TRUE);
    for (const char* loader :
         {"VipsForeignLoadTiff",
          "VipsForeignLoadPng",
          "VipsForeignLoadJpeg",
          "VipsForeignLoadWebp",
          "VipsForeignLoadPpm"}) {
      vips_operation_block_set(loader, FALSE);
    }
  });
}

std::string take_vips_error() {
  std::string text = vips_error_buffer();
  vips_error_clear();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.empty()) return "libvips gave no reason";
  const size_t at = text.rfind('\n');
  return at == std::string::npos ? text : text.substr(at + 1);
}

namespace {

/// Whether ensure_vips blocked the loader `nickname` (a format no reader may open).
bool blocked(const char* nickname) {
  VipsOperation* op = vips_operation_new(nickname);
  if (op == nullptr) {
    vips_error_clear();
    return true;
  }
  const bool is_blocked = (vips_operation_get_flags(op) & VIPS_OPERATION_BLOCKED) != 0;
  g_object_unref(op);
  return is_blocked;
}

}  // namespace

std::unique_ptr<RegionReader> open_vips(
    const std::string& path, const RegionReaderOptions& options) {
  ensure_vips();
  vips_error_clear();
  const char* type = vips_foreign_find_load(path.c_str());
  if (type == nullptr) {
    vips_error_clear();
    return nullptr;
  }
  const char* nickname = vips_nickname_find(g_type_from_name(type));
  if (nickname == nullptr || blocked(nickname)) return nullptr;  // not a format it may read
  check_tiff_layout(path);  // libvips would allocate what a strip's declared size says
  return std::make_unique<VipsReader>(path, nickname, options);
}

}  // namespace patchwise::detail

namespace patchwise {

void write_pyramid_tiff(
    const std::string& path, const at::Tensor& image, const PyramidTiffOptions& options) {
  check_output_writable(path, "pyramidal TIFF");
  TORCH_CHECK(
      image.dim() == 3 && image.scalar_type() == at::kByte &&
          (image.size(0) == 1 || image.size(0) == 3),
      "write_pyramid_tiff: expected uint8 [C,H,W] with C = 1 or 3, got ",
      image.sizes());
  detail::ensure_vips();
  at::Tensor hwc = image.permute({1, 2, 0}).contiguous();
  VipsImage* in = vips_image_new_from_memory(
      hwc.data_ptr(),
      static_cast<size_t>(hwc.numel()),
      static_cast<int>(image.size(2)),
      static_cast<int>(image.size(1)),
      static_cast<int>(image.size(0)),
      VIPS_FORMAT_UCHAR);
  TORCH_CHECK(in != nullptr, "libvips: ", detail::take_vips_error());
  detail::Image owned(in);
  if (options.mpp > 0) {
    VipsImage* resolved = nullptr;
    const double per_mm = 1000.0 / options.mpp;
    if (vips_copy(in, &resolved, "xres", per_mm, "yres", per_mm, nullptr) != 0) {
      throw std::runtime_error("libvips: " + detail::take_vips_error());
    }
    owned.reset(resolved);
    in = resolved;
  }
  void* buffer = nullptr;
  size_t size = 0;
  const int t = static_cast<int>(options.tile);
  const bool jpeg = options.jpeg_quality > 0;
  if (vips_tiffsave_buffer(
          in,
          &buffer,
          &size,
          "tile",
          TRUE,
          "tile_width",
          t,
          "tile_height",
          t,
          "pyramid",
          TRUE,
          "compression",
          jpeg ? VIPS_FOREIGN_TIFF_COMPRESSION_JPEG : VIPS_FOREIGN_TIFF_COMPRESSION_DEFLATE,
          "Q",
          jpeg ? options.jpeg_quality : 75,
          "resunit",
          VIPS_FOREIGN_TIFF_RESUNIT_CM,
          nullptr) != 0) {
    throw InputError(fmt::format("{}: cannot encode a TIFF ({})", path, detail::take_vips_error()));
  }
  std::unique_ptr<void, void (*)(void*)> bytes(buffer, g_free);
  write_file_atomically(path, "pyramidal TIFF", [&](std::ostream& out) {
    out.write(static_cast<const char*>(buffer), static_cast<std::streamsize>(size));
  });
}

}  // namespace patchwise
