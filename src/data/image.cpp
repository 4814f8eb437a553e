#include "patchwise/data/image.h"

#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>
#include <tuple>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/data/region.h"
#include "region_readers.h"

namespace patchwise {
namespace {

/// uint8 [C,H,W] -> an 8-bit cv::Mat (BGR for 3 channels), a copy.
cv::Mat to_mat(const at::Tensor& image) {
  TORCH_CHECK(
      image.dim() == 3 && image.scalar_type() == torch::kUInt8 &&
          (image.size(0) == 1 || image.size(0) == 3),
      "expected uint8 [C,H,W] with C = 1 or 3, got ",
      image.sizes());
  at::Tensor hwc = image.permute({1, 2, 0}).contiguous();
  const int channels = static_cast<int>(image.size(0));
  cv::Mat mat(
      static_cast<int>(image.size(1)),
      static_cast<int>(image.size(2)),
      CV_8UC(channels),
      hwc.data_ptr<uint8_t>());
  cv::Mat out;
  if (channels == 3) {
    cv::cvtColor(mat, out, cv::COLOR_RGB2BGR);
  } else {
    out = mat.clone();
  }
  return out;
}

/// The image formats read, by their signature. Everything else is refused before
/// OpenCV sees it: Debian's OpenCV hands unknown files to GDAL, whose many
/// decoders (DICOM, NITF, ...) are far outside what an image classifier needs and
/// abort on malformed input.
bool known_image_signature(const char* head, size_t n) {
  auto starts = [&](const char* magic, size_t len) {
    return n >= len && std::memcmp(head, magic, len) == 0;
  };
  return starts("\x89PNG\r\n\x1a\n", 8) || starts("\xff\xd8\xff", 3) || starts("BM", 2) ||
         starts("II*\0", 4) || starts("MM\0*", 4) ||
         (n >= 2 && head[0] == 'P' &&
          ((head[1] >= '1' && head[1] <= '6') || head[1] == 'F' || head[1] == 'f')) ||
         (starts("RIFF", 4) && n >= 12 && std::memcmp(head + 8, "WEBP", 4) == 0);
}

bool known_image_signature(const std::string& path) {
  char head[12] = {};
  std::ifstream in(path, std::ios::binary);
  in.read(head, sizeof(head));
  return known_image_signature(head, static_cast<size_t>(in.gcount()));
}

/// The checks before any decoding: the channels asked for, and a known signature.
void check_decodable(bool known_signature, const std::string& name, int64_t channels) {
  check_input(
      channels == 0 || channels == 1 || channels == 3,
      "{}: {} channels requested, expected 1 or 3",
      name,
      channels);
  check_input(
      known_signature,
      "{}: cannot decode image: not a PNG, JPEG, BMP, TIFF, PNM, PFM or WebP file",
      name);
}

/// Largest width x height decoded whole: the region readers' --max-pixels default.
/// OpenCV allocates what a header declares before decoding (a fuzzed 181-byte JPEG
/// asked for 1.9 GB), so the header is read first, by libvips, which decodes nothing.
constexpr int64_t kMaxDecodedPixels = 100'000'000;

/// A JPEG's width and height from its first frame header (SOFn), or 0 x 0: libvips
/// refuses a truncated JPEG whose header OpenCV still trusts.
/// Reads each segment's header and seeks past its body, so that only headers are read.
std::pair<int64_t, int64_t> jpeg_frame_size(std::istream& in) {
  in.seekg(2);  // past SOI
  unsigned char m[9];
  while (in.read(reinterpret_cast<char*>(m), 2)) {
    if (m[0] != 0xff || m[1] == 0xff || m[1] == 0x00) {
      in.seekg(-1, std::ios::cur);  // not a marker: resynchronize one byte on
      continue;
    }
    const uint8_t marker = m[1];
    // TEM, RSTn, SOI and EOI stand alone: no length follows (read as one, a length would
    // skip the frame header that libjpeg then finds: a fuzzed 236-byte JPEG decoded as
    // 27,285 x 22,950 pixels in 2.6 GB).
    if (marker == 0x01 || (marker >= 0xd0 && marker <= 0xd9)) continue;
    if (!in.read(reinterpret_cast<char*>(m + 2), 2)) break;
    const int64_t length = (int64_t{m[2]} << 8) | m[3];
    if (marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc) {
      if (!in.read(reinterpret_cast<char*>(m + 4), 5)) break;
      return {(int64_t{m[7]} << 8) | m[8], (int64_t{m[5]} << 8) | m[6]};
    }
    in.seekg(length - 2, std::ios::cur);
  }
  return {0, 0};
}

void check_pixels(int64_t w, int64_t h, const std::string& name) {
  check_input(
      w * h <= kMaxDecodedPixels,
      "{}: {}x{} = {} pixels, expected at most {} for an image decoded whole",
      name,
      w,
      h,
      w * h,
      kMaxDecodedPixels);
}

/// The width and height a PNG's or JPEG's header declares (0 x 0 when it declares
/// none), read from its bytes; false for the other formats.
bool declared_size(const std::string& bytes, int64_t& w, int64_t& h) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto be32 = [&](size_t at) {
    return (int64_t{b[at]} << 24) | (int64_t{b[at + 1]} << 16) | (int64_t{b[at + 2]} << 8) |
           b[at + 3];
  };
  if (bytes.rfind("\x89PNG\r\n\x1a\n", 0) == 0) {
    const bool ihdr = bytes.size() >= 24 && bytes.compare(12, 4, "IHDR") == 0;
    w = ihdr ? be32(16) : 0;
    h = ihdr ? be32(20) : 0;
    return true;
  }
  if (bytes.rfind("\xff\xd8\xff", 0) == 0) {
    std::istringstream in(bytes);
    std::tie(w, h) = jpeg_frame_size(in);
    return true;
  }
  return false;
}

void check_declared_size(const std::string& path) {
  detail::check_tiff_layout(path);  // a strip larger than the file, before any decoder
  int64_t w = 0, h = 0;
  try {
    const auto header = open_region_reader(path, {"vips", 0});
    w = header->width();
    h = header->height();
  } catch (const InputError&) {
    std::ifstream in(path, std::ios::binary);
    std::tie(w, h) = jpeg_frame_size(in);  // else OpenCV decides, with its own message
  }
  check_pixels(w, h, path);
}

/// Runs `decode` with the process's stderr captured, and returns what was printed:
/// the codecs under OpenCV (libpng, libjpeg, libtiff) print their complaints there,
/// which would break the one-line error (or litter a successful read with warnings).
/// One scratch file, made once and emptied after each use, takes the text.
std::string capture_stderr(const std::function<void()>& decode) {
  static std::mutex mutex;
  static FILE* sink = std::tmpfile();
  std::lock_guard<std::mutex> lock(mutex);
  std::fflush(stderr);
  const int saved = sink ? ::dup(STDERR_FILENO) : -1;
  if (saved < 0) {
    decode();
    return "";
  }
  ::dup2(::fileno(sink), STDERR_FILENO);
  auto restore = [&] {
    std::fflush(stderr);
    ::dup2(saved, STDERR_FILENO);
    ::close(saved);
  };
  try {
    decode();
  } catch (...) {
    restore();
    std::rewind(sink);
    [[maybe_unused]] const int ignored = ::ftruncate(::fileno(sink), 0);
    throw;
  }
  restore();
  std::string text;
  const long size = std::ftell(sink);
  if (size > 0) {
    std::rewind(sink);
    text.resize(static_cast<size_t>(size));
    text.resize(std::fread(text.data(), 1, text.size(), sink));
  }
  std::rewind(sink);
  [[maybe_unused]] const int ignored = ::ftruncate(::fileno(sink), 0);
  return text;
}

/// The last non-empty line of `text`.
std::string last_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  const size_t at = text.rfind('\n');
  return at == std::string::npos ? text : text.substr(at + 1);
}

/// An 8-bit cv::Mat (gray or BGR) -> uint8 [C,H,W] (RGB for 3 channels).
at::Tensor from_mat(const cv::Mat& mat) {
  cv::Mat rgb;
  if (mat.channels() == 3) {
    cv::cvtColor(mat, rgb, cv::COLOR_BGR2RGB);
  } else {
    rgb = mat;
  }
  if (!rgb.isContinuous()) rgb = rgb.clone();
  at::Tensor hwc = torch::from_blob(rgb.data, {rgb.rows, rgb.cols, rgb.channels()}, torch::kUInt8);
  return hwc.permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);  // the Mat owns the bytes
}

/// `mat` resized to h x w: area averaging when shrinking, bilinear when enlarging.
cv::Mat resized_mat(const cv::Mat& mat, int64_t h, int64_t w) {
  cv::Mat out;
  const bool shrinking = h < mat.rows || w < mat.cols;
  cv::resize(
      mat,
      out,
      cv::Size(static_cast<int>(w), static_cast<int>(h)),
      0,
      0,
      shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
  return out;
}

cv::Mat convert_decoded(
    cv::Mat raw, const std::string& complaint, const std::string& path, int64_t channels);

/// The file decoded as an 8-bit Mat of `channels` (0: its own, grey or 3) in OpenCV's
/// BGR order.
cv::Mat decode_mat(const std::string& path, int64_t channels) {
  namespace fs = std::filesystem;
  check_readable_file(path, "image file");
  check_decodable(known_image_signature(path), path, channels);
  check_declared_size(path);
  cv::Mat raw;
  std::string complaint;
  try {
    complaint = capture_stderr([&] { raw = cv::imread(path, cv::IMREAD_UNCHANGED); });
  } catch (const cv::Exception& e) {
    throw InputError(fmt::format("{}: cannot decode image ({})", path, last_line(e.msg)));
  }
  return convert_decoded(raw, complaint, path, channels);
}

/// The line of a codec's complaint that says data is missing or corrupt, or "": libjpeg
/// decodes what a truncated or damaged file lacks as grey and only warns ("Premature end
/// of JPEG file", "Corrupt JPEG data: premature end of data segment"). Extraneous bytes
/// before a marker, which some cameras write, lose nothing.
std::string missing_data(const std::string& complaint) {
  std::istringstream lines(complaint);
  for (std::string line; std::getline(lines, line);) {
    const bool premature = line.find("remature end") != std::string::npos;
    const bool corrupt = line.find("Corrupt JPEG data") != std::string::npos &&
                         line.find("extraneous bytes") == std::string::npos;
    if (premature || corrupt) return line;
  }
  return "";
}

/// A Mat as OpenCV decoded it (any depth, 1 to 4 channels) as 8 bits of `channels`
/// (0: 1 for grey, else 3), or InputError naming `path` with what the codec said.
cv::Mat convert_decoded(
    cv::Mat raw, const std::string& complaint, const std::string& path, int64_t channels) {
  const std::string missing = missing_data(complaint);
  check_input(
      missing.empty(),
      "{}: the image's data is missing or corrupt ({}), expected a whole image",
      path,
      missing);
  if (raw.empty() || raw.rows <= 0 || raw.cols <= 0) {
    throw InputError(
        complaint.empty()
            ? fmt::format("{}: cannot decode image", path)
            : fmt::format("{}: cannot decode image ({})", path, last_line(complaint)));
  }
  if (raw.depth() == CV_32F || raw.depth() == CV_64F) {
    // Floating-point files (TIFF, PFM, EXR) hold intensities in [0, 1]; NaN,
    // infinities and values outside are refused rather than saturated.
    cv::Point where;
    const cv::Mat flat = raw.reshape(1);
    if (!cv::checkRange(flat, /*quiet=*/true, &where, 0.0, 1.0 + 1e-6)) {
      const double value = raw.depth() == CV_32F ? flat.at<float>(where) : flat.at<double>(where);
      throw InputError(fmt::format(
          "{}: pixel value {} at row {}, column {}, expected floating-point pixels in [0, 1]",
          path,
          value,
          where.y,
          where.x / raw.channels()));
    }
    cv::Mat scaled;
    raw.convertTo(scaled, CV_8U, 255.0);
    raw = scaled;
  } else if (raw.depth() == CV_16U) {
    cv::Mat scaled;
    raw.convertTo(scaled, CV_8U, 1.0 / 257.0);
    raw = scaled;
  } else {
    check_input(
        raw.depth() == CV_8U,
        "{}: signed integer pixels (OpenCV depth {}), expected 8- or 16-bit unsigned or "
        "floating-point pixels",
        path,
        raw.depth());
  }
  cv::Mat mat;
  const int file_channels = raw.channels();
  if (file_channels == 4) {
    cv::cvtColor(raw, mat, cv::COLOR_BGRA2BGR);
  } else {
    mat = raw;
  }
  const int64_t want = channels == 0 ? (file_channels == 1 ? 1 : 3) : channels;
  if (want == 1 && mat.channels() == 3) {
    cv::Mat gray;
    cv::cvtColor(mat, gray, cv::COLOR_BGR2GRAY);
    mat = gray;
  } else if (want == 3 && mat.channels() == 1) {
    cv::Mat bgr;
    cv::cvtColor(mat, bgr, cv::COLOR_GRAY2BGR);
    mat = bgr;
  }
  return mat;
}

}  // namespace

at::Tensor read_image(const std::string& path, int64_t channels) {
  return from_mat(decode_mat(path, channels));
}

at::Tensor decode_image(const std::string& bytes, const std::string& name, int64_t channels) {
  check_decodable(known_image_signature(bytes.data(), bytes.size()), name, channels);
  int64_t w = 0, h = 0;
  if (!declared_size(bytes, w, h)) {
    // Formats whose header only libvips reads: through a file, as read_image.
    at::Tensor image;
    with_scratch_file(
        bytes,
        std::filesystem::temp_directory_path().string(),
        "",
        name,
        [&](const std::string& path) { image = read_image(path, channels); });
    return image;
  }
  check_pixels(w, h, name);
  cv::Mat raw;
  std::string complaint;
  const cv::Mat buffer(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
  try {
    complaint = capture_stderr([&] { raw = cv::imdecode(buffer, cv::IMREAD_UNCHANGED); });
  } catch (const cv::Exception& e) {
    throw InputError(fmt::format("{}: cannot decode image ({})", name, last_line(e.msg)));
  }
  return from_mat(convert_decoded(raw, complaint, name, channels));
}

void read_image_into(
    const std::string& path, int64_t channels, int64_t h, int64_t w, uint8_t* out) {
  TORCH_CHECK(channels == 1 || channels == 3, "read_image_into: channels ", channels);
  cv::Mat mat = decode_mat(path, channels);
  if (mat.rows != h || mat.cols != w) mat = resized_mat(mat, h, w);
  if (!mat.isContinuous()) mat = mat.clone();
  // HWC in BGR to CHW in RGB, as read_image gives.
  const int64_t plane = h * w;
  const uint8_t* from = mat.data;
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t source = channels == 3 ? 2 - c : 0;
    uint8_t* to = out + c * plane;
    for (int64_t k = 0; k < plane; ++k) to[k] = from[k * channels + source];
  }
}

void write_image(const std::string& path, const at::Tensor& image) {
  check_output_writable(path, "image file");
  cv::Mat mat = to_mat(image);
  bool ok = false;
  try {
    ok = cv::imwrite(path, mat);
  } catch (const cv::Exception& e) {
    throw InputError(fmt::format("{}: cannot write image ({})", path, e.msg));
  }
  check_input(ok, "{}: cannot write image, expected a .png or .jpg path", path);
}

std::string encode_png(const at::Tensor& image) {
  std::vector<uint8_t> bytes;
  TORCH_CHECK(cv::imencode(".png", to_mat(image), bytes), "PNG encoding failed");
  return std::string(bytes.begin(), bytes.end());
}

at::Tensor resize_image(const at::Tensor& image, int64_t h, int64_t w) {
  return from_mat(resized_mat(to_mat(image), h, w));
}

}  // namespace patchwise
