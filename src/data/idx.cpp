#include "patchwise/data/idx.h"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <vector>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;

constexpr size_t kIdxHeaderImages = 16;  // magic, count, rows, cols
constexpr size_t kIdxHeaderLabels = 8;   // magic, count
constexpr size_t kReadChunk = 1 << 20;

/// deflate cannot expand beyond this ratio: a gzip file of M bytes holds at most
/// about kMaxDeflateRatio * M bytes, so a larger declared size is a lie.
constexpr uint64_t kMaxDeflateRatio = 1032;

/// An IDX file (plain or gzip) opened for reading: header first, then the payload
/// straight into its tensor, so the data is held once and nothing is allocated
/// for sizes the file cannot hold.
class IdxFile {
 public:
  explicit IdxFile(const std::string& path) : path_(path) {
    check_readable_file(path, "file");
    size_ = fs::file_size(path);
    file_ = gzopen(path.c_str(), "rb");
    check_input(file_ != nullptr, "{}: cannot open for reading", path);
    compressed_ = gzdirect(file_) == 0;
  }
  ~IdxFile() { gzclose(file_); }
  IdxFile(const IdxFile&) = delete;
  IdxFile& operator=(const IdxFile&) = delete;

  /// Up to `n` bytes into `out`; the number read.
  size_t read(uint8_t* out, size_t n) {
    size_t done = 0;
    while (done < n) {
      const auto want = static_cast<unsigned>(std::min<size_t>(n - done, kReadChunk));
      const int got = gzread(file_, out + done, want);
      if (got < 0) {
        int code = 0;
        throw InputError(
            fmt::format("{}: corrupt compressed data ({})", path_, gzerror(file_, &code)));
      }
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    return done;
  }

  /// The most payload bytes after a `header`-byte header that this file could hold.
  uint64_t max_payload(size_t header) const {
    const uint64_t limit = compressed_ ? size_ * kMaxDeflateRatio : size_;
    return limit > header ? limit - header : 0;
  }

  /// Reads exactly `bytes` bytes into a new uint8 tensor of `sizes`, and checks that
  /// nothing follows them; `what` describes the declared content for messages.
  at::Tensor read_payload(uint64_t bytes, at::IntArrayRef sizes, const std::string& what) {
    at::Tensor out = torch::empty(sizes, torch::kUInt8);
    const size_t got = read(out.data_ptr<uint8_t>(), bytes);
    check_input(
        got == bytes,
        "{}: {} bytes after the header, expected {} = {} bytes",
        path_,
        got,
        what,
        bytes);
    uint8_t extra = 0;
    check_input(
        read(&extra, 1) == 0, "{}: more bytes than the header's {} = {} bytes", path_, what, bytes);
    return out;
  }

 private:
  std::string path_;
  uint64_t size_ = 0;
  gzFile file_ = nullptr;
  bool compressed_ = false;
};

int32_t read_be_int32(const std::vector<uint8_t>& bytes, size_t offset) {
  return static_cast<int32_t>(
      (uint32_t(bytes[offset]) << 24) | (uint32_t(bytes[offset + 1]) << 16) |
      (uint32_t(bytes[offset + 2]) << 8) | uint32_t(bytes[offset + 3]));
}

void write_be_int32(std::ofstream& out, int32_t value) {
  uint8_t b[4] = {
      uint8_t(uint32_t(value) >> 24),
      uint8_t(uint32_t(value) >> 16),
      uint8_t(uint32_t(value) >> 8),
      uint8_t(value)};
  out.write(reinterpret_cast<const char*>(b), 4);
}

void check_header(
    const std::vector<uint8_t>& bytes, size_t header, int32_t magic, const std::string& path,
    const char* kind) {
  if (bytes.size() >= 4) {
    int32_t found = read_be_int32(bytes, 0);
    check_input(
        found == magic,
        "{}: wrong magic number {} for an IDX {} file, expected {}",
        path,
        found,
        kind,
        magic);
  }
  check_input(
      bytes.size() >= header,
      "{}: truncated IDX {} file: {} bytes, expected a {}-byte header",
      path,
      kind,
      bytes.size(),
      header);
}

std::string find_split_file(const std::string& dir, const std::string& name) {
  for (const std::string& candidate : {name, name + ".gz"}) {
    fs::path p = fs::path(dir) / candidate;
    if (fs::exists(p)) return p.string();
  }
  throw InputError(fmt::format("{}: no {} or {}.gz in this directory", dir, name, name));
}

bool names_fashion(const std::string& path) {
  std::string lower = path;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  return lower.find("fashion") != std::string::npos;
}

std::vector<std::string> class_names_for(const std::string& dir, int64_t num_classes) {
  fs::path listing = fs::path(dir) / "classes.txt";
  if (fs::is_regular_file(listing)) {
    std::ifstream in(listing);
    std::vector<std::string> names;
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) names.push_back(line);
    }
    check_input(
        static_cast<int64_t>(names.size()) >= num_classes,
        "{}: {} class names, but the labels use {} classes",
        listing.string(),
        names.size(),
        num_classes);
    return names;
  }
  if (names_fashion(dir) && num_classes <= 10) return fashion_mnist_class_names();
  std::vector<std::string> names;
  for (int64_t k = 0; k < std::max<int64_t>(num_classes, 10); ++k)
    names.push_back(std::to_string(k));
  return names;
}

}  // namespace

at::Tensor read_idx_images(const std::string& path) {
  IdxFile file(path);
  std::vector<uint8_t> header(kIdxHeaderImages);
  header.resize(file.read(header.data(), header.size()));
  check_header(header, kIdxHeaderImages, kIdxImagesMagic, path, "images");
  const int64_t count = read_be_int32(header, 4);
  const int64_t rows = read_be_int32(header, 8);
  const int64_t cols = read_be_int32(header, 12);
  check_input(count > 0, "{}: image count {}, expected at least 1", path, count);
  check_input(
      rows > 0 && cols > 0,
      "{}: image size {}x{}, expected positive rows and columns",
      path,
      rows,
      cols);
  // Division, not multiplication: a forged header cannot overflow the check.
  const uint64_t room = file.max_payload(kIdxHeaderImages);
  check_input(
      room / uint64_t(rows) / uint64_t(cols) >= uint64_t(count),
      "{}: declares {} images of {}x{}, but only {} bytes of pixels can follow the header",
      path,
      count,
      rows,
      cols,
      room);
  return file.read_payload(
      uint64_t(count * rows * cols),
      {count, 1, rows, cols},
      fmt::format("{} images of {}x{}", count, rows, cols));
}

at::Tensor read_idx_labels(const std::string& path) {
  IdxFile file(path);
  std::vector<uint8_t> header(kIdxHeaderLabels);
  header.resize(file.read(header.data(), header.size()));
  check_header(header, kIdxHeaderLabels, kIdxLabelsMagic, path, "labels");
  const int64_t count = read_be_int32(header, 4);
  check_input(count > 0, "{}: label count {}, expected at least 1", path, count);
  check_input(
      uint64_t(count) <= file.max_payload(kIdxHeaderLabels),
      "{}: declares {} labels, but only {} bytes can follow the header",
      path,
      count,
      file.max_payload(kIdxHeaderLabels));
  return file.read_payload(uint64_t(count), {count}, fmt::format("{} labels", count))
      .to(torch::kInt64);
}

Dataset load_idx_split(const std::string& dir, const std::string& prefix, int64_t limit) {
  check_input(fs::exists(dir), "{}: no such directory", dir);
  check_input(fs::is_directory(dir), "{}: expected a directory holding IDX files", dir);
  std::string images_path = find_split_file(dir, prefix + "-images-idx3-ubyte");
  std::string labels_path = find_split_file(dir, prefix + "-labels-idx1-ubyte");
  Dataset data;
  data.images = read_idx_images(images_path);
  data.labels = read_idx_labels(labels_path);
  data.source = dir;
  check_input(
      data.images.size(0) == data.labels.size(0),
      "{}: {} images but {} labels in {}; expected the same count",
      images_path,
      data.images.size(0),
      data.labels.size(0),
      labels_path);
  int64_t num_classes = data.labels.max().item<int64_t>() + 1;
  data.class_names = class_names_for(dir, num_classes);
  return take_first(data, limit);
}

void write_idx_images(const std::string& path, const at::Tensor& images) {
  TORCH_CHECK(
      images.dim() == 4 && images.size(1) == 1 && images.scalar_type() == torch::kUInt8,
      "write_idx_images expects uint8 [N,1,H,W], got ",
      images.sizes());
  std::ofstream out(path, std::ios::binary);
  check_input(out.good(), "{}: cannot open for writing", path);
  write_be_int32(out, kIdxImagesMagic);
  write_be_int32(out, static_cast<int32_t>(images.size(0)));
  write_be_int32(out, static_cast<int32_t>(images.size(2)));
  write_be_int32(out, static_cast<int32_t>(images.size(3)));
  at::Tensor c = images.contiguous();
  out.write(reinterpret_cast<const char*>(c.data_ptr<uint8_t>()), c.numel());
  check_input(out.good(), "{}: write failed", path);
}

void write_idx_labels(const std::string& path, const at::Tensor& labels) {
  std::ofstream out(path, std::ios::binary);
  check_input(out.good(), "{}: cannot open for writing", path);
  write_be_int32(out, kIdxLabelsMagic);
  write_be_int32(out, static_cast<int32_t>(labels.size(0)));
  at::Tensor c = labels.to(torch::kUInt8).contiguous();
  out.write(reinterpret_cast<const char*>(c.data_ptr<uint8_t>()), c.numel());
  check_input(out.good(), "{}: write failed", path);
}

}  // namespace patchwise
