#include "jpeg_tile.h"

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstring>

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>

namespace patchwise::detail {
namespace {

struct ErrorJump {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void fail(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<ErrorJump*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  std::longjmp(e->jump, 1);
}

/// Warnings (level -1: corrupt or truncated data) fail too; trace messages are dropped.
void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) fail(cinfo);
}

J_COLOR_SPACE coded_space(JpegColour colour) {
  switch (colour) {
    case JpegColour::kGrey:
      return JCS_GRAYSCALE;
    case JpegColour::kRgb:
      return JCS_RGB;
    case JpegColour::kYCbCr:
      break;
  }
  return JCS_YCbCr;
}

/// The decode proper. Only C objects live across setjmp; returns false with
/// error->message set.
bool decode(const JpegTile& tile, uint8_t* out, ErrorJump* error) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&error->manager);
  error->manager.error_exit = fail;
  error->manager.emit_message = on_message;
  if (setjmp(error->jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  if (!tile.tables.empty()) {  // the tables-only stream first, then the abbreviated tile
    jpeg_mem_src(&cinfo, tile.tables.data(), static_cast<unsigned long>(tile.tables.size()));
    jpeg_read_header(&cinfo, FALSE);
  }
  jpeg_mem_src(&cinfo, tile.data.data(), static_cast<unsigned long>(tile.data.size()));
  const int channels = tile.colour == JpegColour::kGrey ? 1 : 3;
  if (jpeg_read_header(&cinfo, TRUE) != JPEG_HEADER_OK ||
      static_cast<int64_t>(cinfo.image_width) != tile.width ||
      static_cast<int64_t>(cinfo.image_height) != tile.height || cinfo.num_components != channels) {
    std::snprintf(
        error->message,
        sizeof error->message,
        "a JPEG of %ux%u with %d components where the TIFF says %lldx%lld with %d",
        cinfo.image_width,
        cinfo.image_height,
        cinfo.num_components,
        static_cast<long long>(tile.width),
        static_cast<long long>(tile.height),
        channels);
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  cinfo.jpeg_color_space = coded_space(tile.colour);
  cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = static_cast<unsigned>(tile.scale_denom);
  jpeg_start_decompress(&cinfo);
  if (static_cast<int64_t>(cinfo.output_width) * tile.scale_denom != tile.width ||
      static_cast<int64_t>(cinfo.output_height) * tile.scale_denom != tile.height ||
      cinfo.output_components != channels) {
    std::snprintf(error->message, sizeof error->message, "decoded at an unexpected size");
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  const size_t stride = cinfo.output_width * static_cast<size_t>(channels);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW rows[16];
    const JDIMENSION first = cinfo.output_scanline;
    const JDIMENSION count = std::min<JDIMENSION>(16, cinfo.output_height - first);
    for (JDIMENSION r = 0; r < count; ++r) rows[r] = out + (first + r) * stride;
    jpeg_read_scanlines(&cinfo, rows, count);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

}  // namespace

std::string decode_jpeg_tile(const JpegTile& tile, uint8_t* out) {
  ErrorJump error{};
  return decode(tile, out, &error) ? std::string() : std::string(error.message);
}

}  // namespace patchwise::detail
