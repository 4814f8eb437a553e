#pragma once
// Images read region by region: a handle with the image's size, channels and pyramid
// levels, whose read(box, level) returns the pixels of just that box. Large images
// (whole-slide images, satellite scenes, scans) are never held whole.
//
// Readers, tried in this order by open_region_reader (or named with options.reader):
//   openslide  whole-slide formats through OpenSlide: Aperio SVS, Hamamatsu, MIRAX,
//              Philips, Leica, Ventana, Sakura, ... Its premultiplied ARGB is turned
//              into RGB; fully transparent pixels (outside the scanned area) read as
//              white, i.e. as background. A generic tiled TIFF goes to vips unless this
//              reader is asked for: Debian's OpenSlide 3.4.1 misreads the deflate- and
//              LZW-compressed levels that are smaller than one tile.
//   tiff       tiled TIFFs whose levels all hold JPEG tiles (as scanners and libvips'
//              pyramids write them): tiles read by pread() and decoded by libjpeg-turbo,
//              scaled by 1/2, 1/4 or 1/8 in the DCT domain when read_resized() shrinks
//              by that much; a small cache of decoded tiles.
//   vips       everything else libvips loads: PNG, JPEG, WebP, TIFF (striped or tiled;
//              the pages of a pyramidal TIFF whose sizes halve are its levels), PNM, ...
//              TIFF is read in regions; formats that must be decoded whole (PNG, JPEG,
//              WebP, ...) are refused beyond options.max_pixels before any decoding.
//   memory     a uint8 [C,H,W] tensor (today's in-memory data sets), one level.
// Pixels come as uint8 with 1 (grey) or 3 (RGB) channels: alpha is dropped, 16-bit
// samples are scaled to 8 bits, other colour spaces converted to sRGB.
//
// read() may be called from several threads at once.

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace patchwise {

/// A rectangle in the pixel coordinates of one pyramid level.
struct Box {
  int64_t x = 0;
  int64_t y = 0;
  int64_t w = 0;
  int64_t h = 0;
  bool operator==(const Box& o) const { return x == o.x && y == o.y && w == o.w && h == o.h; }
};

struct PyramidLevel {
  int64_t width = 0;
  int64_t height = 0;
  double downsample = 1;  ///< level-0 pixels per pixel of this level
};

struct RegionReaderOptions {
  std::string reader;  ///< "openslide", "tiff", "vips" or empty: the first that opens the file
  /// Largest width * height decoded whole (PNG, JPEG, ...): 100 million pixels
  /// (300 MB as RGB) by default; 0: no limit.
  int64_t max_pixels = 100'000'000;
};

class RegionReader {
 public:
  virtual ~RegionReader() = default;

  const std::string& path() const { return path_; }
  /// The reader and what it recognized, e.g. "openslide (generic-tiff)", "vips (pngload)".
  const std::string& format() const { return format_; }
  int64_t channels() const { return channels_; }
  const std::vector<PyramidLevel>& levels() const { return levels_; }
  int64_t width() const { return levels_.front().width; }
  int64_t height() const { return levels_.front().height; }
  /// Microns per pixel at level 0 (the mean of x and y), NaN when the file does not say.
  double mpp() const { return mpp_; }

  /// uint8 [C, box.h, box.w]: the pixels of `box` in the coordinates of `level`.
  /// Throws InputError when the level does not exist or the box is empty or not inside it.
  at::Tensor read(const Box& box, int level = 0) const;

  /// read(box, level) resized to uint8 [C, side, side] (area averaging when shrinking,
  /// bilinear when enlarging), with fewer copies than read() then resize_image().
  at::Tensor read_resized(const Box& box, int level, int64_t side) const;

  /// The whole image shrunk (area averaging) so that its longer side is `max_side`
  /// pixels (or its own size when smaller), from the smallest level that is at least
  /// that large: uint8 [C,h,w].
  virtual at::Tensor thumbnail(int64_t max_side) const;

 protected:
  /// The pixels of a checked box as uint8 [h, w, C] (interleaved, contiguous).
  virtual at::Tensor read_region(const Box& box, int level) const = 0;
  /// The pixels of a checked box as uint8 [h', w', C] with side <= h' <= box.h and
  /// side <= w' <= box.w: a reader that can shrink while decoding (JPEG's DCT scaling)
  /// returns fewer pixels for read_resized() to finish. By default read_region().
  virtual at::Tensor read_region_reduced(const Box& box, int level, int64_t side) const {
    return read_region(box, level);
  }

  std::string path_;
  std::string format_;

 private:
  /// Throws InputError when the level does not exist or the box is not inside it.
  void check_box(const Box& box, int level) const;

 protected:
  int64_t channels_ = 3;
  std::vector<PyramidLevel> levels_;
  double mpp_ = std::numeric_limits<double>::quiet_NaN();
};

/// Opens `path` with the first reader of the table above that recognizes it (or the
/// one options.reader names). Reads no pixels. Throws InputError naming the file when
/// it is missing, not a regular file, recognized by no reader, has a zero size or
/// exceeds options.max_pixels where that applies.
std::unique_ptr<RegionReader> open_region_reader(
    const std::string& path, const RegionReaderOptions& options = {});

/// A reader over uint8 [C,H,W] (C = 1 or 3) held in memory; `name` stands for the path.
std::unique_ptr<RegionReader> memory_region_reader(at::Tensor image, const std::string& name);

/// The names of the readers open_region_reader tries, in order.
std::vector<std::string> region_reader_names();

struct PyramidTiffOptions {
  int64_t tile = 256;    ///< tile side in pixels
  double mpp = 0;        ///< > 0: stored as the resolution (microns per pixel at level 0)
  int jpeg_quality = 0;  ///< 1..100: JPEG tiles (as scanners write); 0: deflate (lossless)
};

/// Writes uint8 [C,H,W] as a tiled pyramidal TIFF (each level half the previous, down to
/// one tile) through libvips: the layout slide scanners use, which both readers above
/// read in regions. Atomic like model files.
void write_pyramid_tiff(
    const std::string& path, const at::Tensor& image, const PyramidTiffOptions& options = {});

}  // namespace patchwise
