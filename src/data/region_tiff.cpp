// The TIFF tile reader: tiled TIFFs whose levels all hold JPEG tiles, the layout slide
// scanners and libvips' pyramids write. libtiff reads the directories once; after that
// a tile's bytes come from pread() (any number of threads at once) and libjpeg-turbo
// decodes them. When a read is to be shrunk by a whole factor of 2 or more, the decoder
// scales by 1/2, 1/4 or 1/8 in the DCT domain: each pixel it returns is the mean of a
// 2x2, 4x4 or 8x8 block (for luma exactly, up to rounding), and most of the inverse DCT
// and colour conversion is skipped. Decoded tiles
// stay in a small cache, so that overlapping reads decode a tile once.

#include <fcntl.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <torch/torch.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <list>
#include <mutex>
#include <unordered_map>

#include "jpeg_tile.h"
#include "patchwise/base/error.h"
#include "region_readers.h"

namespace patchwise::detail {
namespace {

/// One pyramid level: a TIFF directory of JPEG tiles.
struct TiffLevel {
  int64_t width = 0, height = 0;
  int64_t tile_w = 0, tile_h = 0;
  int64_t across = 0;  ///< tiles per row
  std::vector<uint64_t> offsets, sizes;
  std::vector<uint8_t> tables;  ///< JPEGTables: the quantization and Huffman tables
  JpegColour colour = JpegColour::kYCbCr;
};

/// libtiff's messages go to a string instead of stderr.
int keep_message(TIFF*, void* user, const char*, const char* format, va_list ap) {
  if (user != nullptr) {
    std::array<char, 512> text{};
    std::vsnprintf(text.data(), text.size(), format, ap);
    *static_cast<std::string*>(user) = text.data();
  }
  return 1;
}

struct TiffCloser {
  void operator()(TIFF* t) const { TIFFClose(t); }
};
using TiffHandle = std::unique_ptr<TIFF, TiffCloser>;

/// Whether the file starts like a TIFF or a BigTIFF.
bool has_tiff_magic(int fd) {
  std::array<unsigned char, 4> m{};
  if (::pread(fd, m.data(), m.size(), 0) != 4) return false;
  return (m[0] == 'I' && m[1] == 'I' && (m[2] == 42 || m[2] == 43) && m[3] == 0) ||
         (m[0] == 'M' && m[1] == 'M' && m[2] == 0 && (m[3] == 42 || m[3] == 43));
}

/// The current directory as a level, or false when it is not tiled 8-bit JPEG with 1
/// (grey) or 3 (RGB or YCbCr) samples.
bool read_level(TIFF* tif, int64_t file_size, const std::string& path, TiffLevel* level) {
  uint32_t w = 0, h = 0, tw = 0, th = 0;
  uint16_t compression = 0, bits = 0, samples = 0, planar = 0, photometric = 0;
  if (!TIFFIsTiled(tif) || !TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w) ||
      !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h) || !TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw) ||
      !TIFFGetField(tif, TIFFTAG_TILELENGTH, &th) ||
      !TIFFGetField(tif, TIFFTAG_COMPRESSION, &compression) ||
      !TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photometric)) {
    return false;
  }
  TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bits);
  TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &samples);
  TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &planar);
  const bool grey = samples == 1 && photometric == PHOTOMETRIC_MINISBLACK;
  const bool colour =
      samples == 3 && (photometric == PHOTOMETRIC_RGB || photometric == PHOTOMETRIC_YCBCR);
  if (compression != COMPRESSION_JPEG || bits != 8 || planar != PLANARCONFIG_CONTIG ||
      !(grey || colour) || w == 0 || h == 0 || tw == 0 || th == 0 || tw % 16 || th % 16 ||
      tw > 8192 || th > 8192) {
    return false;
  }
  level->width = w;
  level->height = h;
  level->tile_w = tw;
  level->tile_h = th;
  level->across = (w + tw - 1) / tw;
  level->colour = grey                             ? JpegColour::kGrey
                  : photometric == PHOTOMETRIC_RGB ? JpegColour::kRgb
                                                   : JpegColour::kYCbCr;
  const int64_t tiles = level->across * ((h + th - 1) / th);
  uint64_t* offsets = nullptr;
  uint64_t* sizes = nullptr;
  check_input(
      static_cast<int64_t>(TIFFNumberOfTiles(tif)) == tiles &&
          TIFFGetField(tif, TIFFTAG_TILEOFFSETS, &offsets) && offsets != nullptr &&
          TIFFGetField(tif, TIFFTAG_TILEBYTECOUNTS, &sizes) && sizes != nullptr,
      "{}: a {}x{} level without its {} tile offsets, expected a valid tiled TIFF",
      path,
      w,
      h,
      tiles);
  level->offsets.assign(offsets, offsets + tiles);
  level->sizes.assign(sizes, sizes + tiles);
  for (int64_t i = 0; i < tiles; ++i) {
    const uint64_t o = level->offsets[static_cast<size_t>(i)];
    const uint64_t n = level->sizes[static_cast<size_t>(i)];
    check_input(
        n > 0 && n <= (uint64_t{1} << 28) && o <= static_cast<uint64_t>(file_size) &&
            n <= static_cast<uint64_t>(file_size) - o,
        "{}: tile {} of the {}x{} level holds {} bytes at offset {}, expected data inside the "
        "file's {} bytes (truncated?)",
        path,
        i,
        w,
        h,
        n,
        o,
        file_size);
  }
  uint32_t table_size = 0;
  void* table = nullptr;
  if (TIFFGetField(tif, TIFFTAG_JPEGTABLES, &table_size, &table) && table != nullptr) {
    const auto* t = static_cast<const uint8_t*>(table);
    level->tables.assign(t, t + table_size);
  }
  return true;
}

/// microns per pixel from the resolution tags, NaN without them.
double resolution_mpp(TIFF* tif) {
  uint16_t unit = 0;
  float x = 0, y = 0;
  if (!TIFFGetField(tif, TIFFTAG_RESOLUTIONUNIT, &unit) ||
      !TIFFGetField(tif, TIFFTAG_XRESOLUTION, &x) || !TIFFGetField(tif, TIFFTAG_YRESOLUTION, &y)) {
    return std::nan("");
  }
  const double um = unit == RESUNIT_CENTIMETER ? 1e4 : unit == RESUNIT_INCH ? 25400 : 0;
  // As libvips: a resolution of at most one pixel per millimetre means "not stated".
  if (um == 0 || !(x * 1000 > um) || !(y * 1000 > um)) return std::nan("");
  return (um / x + um / y) / 2;
}

class TiffReader : public RegionReader {
 public:
  TiffReader(const std::string& path, int fd, std::vector<TiffLevel> levels, double mpp)
      : fd_(fd), tiff_levels_(std::move(levels)) {
    path_ = path;
    format_ = "tiff (JPEG tiles)";
    channels_ = tiff_levels_.front().colour == JpegColour::kGrey ? 1 : 3;
    mpp_ = mpp;
    const auto full = static_cast<double>(tiff_levels_.front().width);
    for (const TiffLevel& l : tiff_levels_) {
      levels_.push_back({l.width, l.height, full / static_cast<double>(l.width)});
    }
  }
  ~TiffReader() override { ::close(fd_); }

 protected:
  at::Tensor read_region(const Box& b, int level) const override {
    return read_scaled(b, level, 1);
  }

  at::Tensor read_region_reduced(const Box& b, int level, int64_t side) const override {
    const TiffLevel& l = tiff_levels_[static_cast<size_t>(level)];
    // Only where the result is the area average of the full decode: the box and the
    // tiles split into d x d blocks, and the scaled box into whole blocks of the output.
    for (const int64_t d : {8, 4, 2}) {
      const bool aligned = b.x % d == 0 && b.y % d == 0 && b.w % d == 0 && b.h % d == 0 &&
                           l.tile_w % d == 0 && l.tile_h % d == 0;
      if (aligned && (b.w / d) % side == 0 && (b.h / d) % side == 0) {
        return read_scaled(b, level, d);
      }
    }
    return read_scaled(b, level, 1);
  }

 private:
  using Tile = std::shared_ptr<const std::vector<uint8_t>>;

  /// uint8 [b.h/d, b.w/d, C] from the tiles decoded at 1/d (b and the tiles divisible by d).
  at::Tensor read_scaled(const Box& b, int level, int64_t d) const {
    const TiffLevel& l = tiff_levels_[static_cast<size_t>(level)];
    const int64_t c = channels_, tw = l.tile_w / d, th = l.tile_h / d;
    const int64_t x0 = b.x / d, y0 = b.y / d, w = b.w / d, h = b.h / d;
    at::Tensor out = torch::empty({h, w, c}, torch::kUInt8);
    uint8_t* to = out.data_ptr<uint8_t>();
    for (int64_t ty = y0 / th; ty <= (y0 + h - 1) / th; ++ty) {
      for (int64_t tx = x0 / tw; tx <= (x0 + w - 1) / tw; ++tx) {
        const Tile tile = decoded(level, ty * l.across + tx, d);
        // The part of this tile inside the box, in scaled pixels.
        const int64_t left = std::max(x0, tx * tw), right = std::min(x0 + w, (tx + 1) * tw);
        const int64_t top = std::max(y0, ty * th), bottom = std::min(y0 + h, (ty + 1) * th);
        for (int64_t y = top; y < bottom; ++y) {
          std::memcpy(
              to + ((y - y0) * w + (left - x0)) * c,
              tile->data() + ((y - ty * th) * tw + (left - tx * tw)) * c,
              static_cast<size_t>((right - left) * c));
        }
      }
    }
    return out;
  }

  /// Tile `index` of `level` decoded at 1/d, from the cache or decoded now.
  Tile decoded(int level, int64_t index, int64_t d) const {
    const uint64_t key = (static_cast<uint64_t>(index) << 12) |
                         (static_cast<uint64_t>(level) << 4) | static_cast<uint64_t>(d);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto hit = cache_.find(key);
      if (hit != cache_.end()) {
        lru_.splice(lru_.begin(), lru_, hit->second);
        return hit->second->second;
      }
    }
    Tile tile = decode(level, index, d);
    std::lock_guard<std::mutex> lock(mutex_);
    if (cache_.count(key) == 0) {
      lru_.emplace_front(key, tile);
      cache_[key] = lru_.begin();
      cached_bytes_ += tile->size();
      while (cached_bytes_ > kCacheBytes && lru_.size() > 1) {
        cached_bytes_ -= lru_.back().second->size();
        cache_.erase(lru_.back().first);
        lru_.pop_back();
      }
    }
    return tile;
  }

  Tile decode(int level, int64_t index, int64_t d) const {
    const TiffLevel& l = tiff_levels_[static_cast<size_t>(level)];
    const auto i = static_cast<size_t>(index);
    std::vector<uint8_t> bytes(l.sizes[i]);
    size_t got = 0;
    while (got < bytes.size()) {
      const ssize_t n = ::pread(
          fd_, bytes.data() + got, bytes.size() - got, static_cast<off_t>(l.offsets[i] + got));
      if (n < 0 && errno == EINTR) continue;
      check_input(
          n > 0,
          "{}: cannot read tile {} of level {} ({})",
          path_,
          index,
          level,
          n == 0 ? "the file ended" : std::strerror(errno));
      got += static_cast<size_t>(n);
    }
    JpegTile job{l.tables, bytes, l.colour, l.tile_w, l.tile_h, static_cast<int>(d)};
    auto pixels = std::make_shared<std::vector<uint8_t>>(
        static_cast<size_t>(l.tile_w / d * (l.tile_h / d) * channels_));
    const std::string problem = decode_jpeg_tile(job, pixels->data());
    check_input(
        problem.empty(),
        "{}: tile {} of level {} ({}x{} tiles): {}, expected a valid JPEG tile",
        path_,
        index,
        level,
        l.tile_w,
        l.tile_h,
        problem);
    return pixels;
  }

  static constexpr size_t kCacheBytes = size_t{16} << 20;

  int fd_;
  std::vector<TiffLevel> tiff_levels_;
  mutable std::mutex mutex_;
  mutable std::list<std::pair<uint64_t, Tile>> lru_;
  mutable std::unordered_map<uint64_t, std::list<std::pair<uint64_t, Tile>>::iterator> cache_;
  mutable size_t cached_bytes_ = 0;
};

/// The levels of a JPEG-tiled TIFF (directories whose sizes halve), or none when the
/// first directory is not one or a level among them is not.
std::vector<TiffLevel> read_levels(TIFF* tif, int64_t file_size, const std::string& path) {
  std::vector<TiffLevel> levels;
  do {
    uint32_t w = 0, h = 0;
    TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h);
    if (!levels.empty()) {
      const TiffLevel& prev = levels.back();
      const bool halves =
          std::abs(2 * int64_t{w} - prev.width) <= 1 && std::abs(2 * int64_t{h} - prev.height) <= 1;
      if (!halves) break;
    }
    TiffLevel level;
    if (!read_level(tif, file_size, path, &level)) return {};
    levels.push_back(std::move(level));
  } while (TIFFReadDirectory(tif));
  return levels;
}

/// libtiff open options: messages kept in `message` (or dropped), single allocations
/// bounded so that a declared size cannot make it allocate gigabytes.
std::unique_ptr<TIFFOpenOptions, void (*)(TIFFOpenOptions*)> quiet_options(std::string* message) {
  std::unique_ptr<TIFFOpenOptions, void (*)(TIFFOpenOptions*)> options(
      TIFFOpenOptionsAlloc(), TIFFOpenOptionsFree);
  TIFFOpenOptionsSetErrorHandlerExtR(options.get(), keep_message, message);
  TIFFOpenOptionsSetWarningHandlerExtR(options.get(), keep_message, nullptr);
  TIFFOpenOptionsSetMaxSingleMemAlloc(options.get(), tmsize_t{1} << 28);
  return options;
}

}  // namespace

void check_tiff_layout(const std::string& path) {
  constexpr uint64_t kMaxTiles = uint64_t{1} << 22;  // 4 M tiles of 256: a 500,000^2 level
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st {};
  const bool tiff = ::fstat(fd, &st) == 0 && has_tiff_magic(fd);
  ::close(fd);
  if (!tiff) return;
  const auto file_size = static_cast<uint64_t>(st.st_size);
  auto options = quiet_options(nullptr);
  TiffHandle tif(TIFFOpenExt(path.c_str(), "rm", options.get()));
  if (!tif) return;
  int page = 0;
  do {
    const uint64_t pieces =
        TIFFIsTiled(tif.get()) ? TIFFNumberOfTiles(tif.get()) : TIFFNumberOfStrips(tif.get());
    check_input(
        pieces <= kMaxTiles,
        "{}: page {} declares {} tiles or strips, expected at most {}",
        path,
        page,
        pieces,
        kMaxTiles);
    uint64_t* sizes = nullptr;
    const uint32_t tag = TIFFIsTiled(tif.get()) ? TIFFTAG_TILEBYTECOUNTS : TIFFTAG_STRIPBYTECOUNTS;
    if (TIFFGetField(tif.get(), tag, &sizes) && sizes != nullptr) {
      for (uint64_t i = 0; i < pieces; ++i) {
        check_input(
            sizes[i] <= file_size,
            "{}: page {} declares a tile or strip of {} bytes, expected at most the file's {}",
            path,
            page,
            sizes[i],
            file_size);
      }
    }
    ++page;
  } while (TIFFReadDirectory(tif.get()));
}

std::unique_ptr<RegionReader> open_tiff(const std::string& path, const RegionReaderOptions&) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !has_tiff_magic(fd)) {
    ::close(fd);
    return nullptr;
  }
  std::string message;
  auto options = quiet_options(&message);
  std::vector<TiffLevel> levels;
  double mpp = std::nan("");
  try {
    TiffHandle tif(TIFFOpenExt(path.c_str(), "rm", options.get()));
    if (tif) {
      mpp = resolution_mpp(tif.get());
      levels = read_levels(tif.get(), st.st_size, path);
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (levels.empty()) {
    ::close(fd);  // not JPEG tiles, or libtiff cannot open it: the next reader decides
    return nullptr;
  }
  return std::make_unique<TiffReader>(path, fd, std::move(levels), mpp);
}

}  // namespace patchwise::detail
