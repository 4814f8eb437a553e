#include "patchwise/data/idx.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <vector>

#include <torch/torch.h>
#include <zlib.h>

#include "patchwise/core/error.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;

constexpr size_t kIdxHeaderImages = 16;  // magic, count, rows, cols
constexpr size_t kIdxHeaderLabels = 8;   // magic, count
constexpr size_t kReadChunk = 1 << 20;

/// The whole (decompressed) content of a file; gzread passes plain files through.
std::vector<uint8_t> read_all_bytes(const std::string& path) {
  check_input(fs::exists(path), "{}: no such file", path);
  check_input(fs::is_regular_file(path), "{}: expected a file, found a directory or special file", path);
  gzFile file = gzopen(path.c_str(), "rb");
  check_input(file != nullptr, "{}: cannot open for reading", path);
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> chunk(kReadChunk);
  while (true) {
    int n = gzread(file, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      std::string why = gzerror(file, &code);
      gzclose(file);
      throw InputError(fmt::format("{}: corrupt compressed data ({})", path, why));
    }
    if (n == 0) break;
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + n);
  }
  gzclose(file);
  return bytes;
}

int32_t read_be_int32(const std::vector<uint8_t>& bytes, size_t offset) {
  return static_cast<int32_t>(
      (uint32_t(bytes[offset]) << 24) | (uint32_t(bytes[offset + 1]) << 16) |
      (uint32_t(bytes[offset + 2]) << 8) | uint32_t(bytes[offset + 3]));
}

void write_be_int32(std::ofstream& out, int32_t value) {
  uint8_t b[4] = {uint8_t(uint32_t(value) >> 24), uint8_t(uint32_t(value) >> 16),
                  uint8_t(uint32_t(value) >> 8), uint8_t(value)};
  out.write(reinterpret_cast<const char*>(b), 4);
}

void check_header(const std::vector<uint8_t>& bytes, size_t header, int32_t magic,
                  const std::string& path, const char* kind) {
  if (bytes.size() >= 4) {
    int32_t found = read_be_int32(bytes, 0);
    check_input(found == magic, "{}: wrong magic number {} for an IDX {} file, expected {}", path,
                found, kind, magic);
  }
  check_input(bytes.size() >= header, "{}: truncated IDX {} file: {} bytes, expected a {}-byte header",
              path, kind, bytes.size(), header);
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
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
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
    check_input(static_cast<int64_t>(names.size()) >= num_classes,
                "{}: {} class names, but the labels use {} classes", listing.string(),
                names.size(), num_classes);
    return names;
  }
  if (names_fashion(dir) && num_classes <= 10) return fashion_mnist_class_names();
  std::vector<std::string> names;
  for (int64_t k = 0; k < std::max<int64_t>(num_classes, 10); ++k) names.push_back(std::to_string(k));
  return names;
}

}  // namespace

at::Tensor read_idx_images(const std::string& path) {
  std::vector<uint8_t> bytes = read_all_bytes(path);
  check_header(bytes, kIdxHeaderImages, kIdxImagesMagic, path, "images");
  int64_t count = read_be_int32(bytes, 4);
  int64_t rows = read_be_int32(bytes, 8);
  int64_t cols = read_be_int32(bytes, 12);
  check_input(count > 0, "{}: image count {}, expected at least 1", path, count);
  check_input(rows > 0 && cols > 0, "{}: image size {}x{}, expected positive rows and columns", path,
              rows, cols);
  int64_t payload = static_cast<int64_t>(bytes.size() - kIdxHeaderImages);
  // Division, not multiplication: a forged header cannot overflow the check.
  check_input(payload / rows / cols >= count,
              "{}: declares {} images of {}x{}, but only {} bytes of pixels follow the header", path,
              count, rows, cols, payload);
  check_input(payload == count * rows * cols,
              "{}: {} bytes of pixels, expected {} images of {}x{} = {} bytes", path, payload, count,
              rows, cols, count * rows * cols);
  at::Tensor images = torch::empty({count, 1, rows, cols}, torch::kUInt8);
  std::copy(bytes.begin() + kIdxHeaderImages, bytes.end(), images.data_ptr<uint8_t>());
  return images;
}

at::Tensor read_idx_labels(const std::string& path) {
  std::vector<uint8_t> bytes = read_all_bytes(path);
  check_header(bytes, kIdxHeaderLabels, kIdxLabelsMagic, path, "labels");
  int64_t count = read_be_int32(bytes, 4);
  int64_t payload = static_cast<int64_t>(bytes.size() - kIdxHeaderLabels);
  check_input(count > 0, "{}: label count {}, expected at least 1", path, count);
  check_input(payload == count, "{}: {} bytes of labels, expected {}", path, payload, count);
  at::Tensor raw = torch::from_blob(bytes.data() + kIdxHeaderLabels, {count}, torch::kUInt8);
  return raw.to(torch::kInt64);
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
  check_input(data.images.size(0) == data.labels.size(0),
              "{}: {} images but {} labels in {}; expected the same count", images_path,
              data.images.size(0), data.labels.size(0), labels_path);
  int64_t num_classes = data.labels.max().item<int64_t>() + 1;
  data.class_names = class_names_for(dir, num_classes);
  return take_first(data, limit);
}

void write_idx_images(const std::string& path, const at::Tensor& images) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == 1 && images.scalar_type() == torch::kUInt8,
              "write_idx_images expects uint8 [N,1,H,W], got ", images.sizes());
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
