#pragma once
// Decoding one JPEG tile of a TIFF (src/data/region_tiff.cpp) with libjpeg-turbo,
// optionally scaled down in the DCT domain. Kept apart because libjpeg reports errors
// by longjmp: this file's decoder holds no C++ object across it.

#include <cstdint>
#include <string>
#include <vector>

namespace patchwise::detail {

/// How the tile's samples are coded (TIFF's photometric interpretation).
enum class JpegColour { kGrey, kRgb, kYCbCr };

struct JpegTile {
  const std::vector<uint8_t>& tables;  ///< the TIFF's JPEGTables (may be empty)
  const std::vector<uint8_t>& data;    ///< the tile's own stream
  JpegColour colour;
  int64_t width, height;  ///< the tile's size, which the stream must state
  int scale_denom;        ///< 1, 2, 4 or 8
};

/// Decodes `tile` into `out`: (width / d) x (height / d) pixels of 1 (grey) or 3 (RGB)
/// bytes, rows packed. Returns "" or why the tile cannot be decoded (a libjpeg
/// message, also for its warnings such as premature end of data).
std::string decode_jpeg_tile(const JpegTile& tile, uint8_t* out);

}  // namespace patchwise::detail
