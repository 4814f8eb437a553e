#include "patchwise/data/cifar.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kCifar10Classes = 10;
constexpr int64_t kCifar100Fine = 100;
constexpr int64_t kCifar100Coarse = 20;
constexpr int kCifar10TrainBatches = 5;

std::vector<std::string> read_names(const fs::path& path, int64_t count) {
  std::vector<std::string> names;
  if (fs::is_regular_file(path)) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty()) names.push_back(line);
    }
  }
  if (static_cast<int64_t>(names.size()) != count) {
    names.clear();
    for (int64_t k = 0; k < count; ++k) names.push_back(std::to_string(k));
  }
  return names;
}

Dataset concat(const std::vector<Dataset>& parts, const std::string& source) {
  std::vector<at::Tensor> images, labels;
  for (const Dataset& d : parts) {
    images.push_back(d.images);
    labels.push_back(d.labels);
  }
  Dataset out;
  out.images = torch::cat(images, 0);
  out.labels = torch::cat(labels, 0);
  out.source = source;
  return out;
}

}  // namespace

Dataset read_cifar_file(
    const std::string& path, int64_t label_bytes, int64_t label_index, int64_t num_classes) {
  check_readable_file(path, "CIFAR batch file");
  const int64_t record = label_bytes + kCifarPixels;
  const int64_t size = static_cast<int64_t>(fs::file_size(path));
  check_input(
      size > 0 && size % record == 0,
      "{}: {} bytes is not a multiple of the {}-byte CIFAR record ({} label byte(s) + {})",
      path,
      size,
      record,
      label_bytes,
      kCifarPixels);
  std::ifstream in(path, std::ios::binary);
  check_input(in.good(), "{}: cannot open for reading", path);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.read(reinterpret_cast<char*>(bytes.data()), size);
  check_input(in.gcount() == size, "{}: read {} of {} bytes", path, in.gcount(), size);

  const int64_t count = size / record;
  Dataset d;
  d.images = torch::empty({count, 3, kCifarSide, kCifarSide}, torch::kUInt8);
  d.labels = torch::empty({count}, torch::kInt64);
  uint8_t* pixels = d.images.data_ptr<uint8_t>();
  int64_t* labels = d.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t* rec = bytes.data() + i * record;
    const int64_t label = rec[label_index];
    check_input(
        label < num_classes,
        "{}: record {} has label {}, expected 0..{}",
        path,
        i,
        label,
        num_classes - 1);
    labels[i] = label;
    std::copy(rec + label_bytes, rec + record, pixels + i * kCifarPixels);
  }
  d.source = path;
  return d;
}

bool is_cifar10_dir(const std::string& dir) {
  return fs::is_regular_file(fs::path(dir) / "data_batch_1.bin");
}

bool is_cifar100_dir(const std::string& dir) {
  return fs::is_regular_file(fs::path(dir) / "train.bin") &&
         fs::is_regular_file(fs::path(dir) / "test.bin");
}

Dataset load_cifar10(const std::string& dir, const std::string& split, int64_t limit) {
  std::vector<Dataset> parts;
  if (split == "train") {
    for (int b = 1; b <= kCifar10TrainBatches; ++b) {
      const fs::path p = fs::path(dir) / ("data_batch_" + std::to_string(b) + ".bin");
      check_input(
          fs::exists(p),
          "{}: missing {}, expected data_batch_1.bin ... data_batch_5.bin",
          dir,
          p.filename().string());
      parts.push_back(read_cifar_file(p.string(), 1, 0, kCifar10Classes));
    }
  } else {
    parts.push_back(
        read_cifar_file((fs::path(dir) / "test_batch.bin").string(), 1, 0, kCifar10Classes));
  }
  Dataset d = concat(parts, dir);
  d.class_names = read_names(fs::path(dir) / "batches.meta.txt", kCifar10Classes);
  return take_first(d, limit);
}

Dataset load_cifar100(
    const std::string& dir, const std::string& split, CifarLabel label, int64_t limit) {
  const bool fine = label == CifarLabel::kFine;
  const int64_t classes = fine ? kCifar100Fine : kCifar100Coarse;
  Dataset d = read_cifar_file(
      (fs::path(dir) / (split == "train" ? "train.bin" : "test.bin")).string(),
      2,
      fine ? 1 : 0,
      classes);
  d.source = dir;
  d.class_names = read_names(
      fs::path(dir) / (fine ? "fine_label_names.txt" : "coarse_label_names.txt"), classes);
  return take_first(d, limit);
}

}  // namespace patchwise
