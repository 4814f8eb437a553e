#include "patchwise/data/source.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include <torch/torch.h>

#include "patchwise/core/error.h"
#include "patchwise/data/idx.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;

bool is_idx_dir(const fs::path& dir) {
  for (const char* name : {"train-images-idx3-ubyte", "train-images-idx3-ubyte.gz",
                           "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"}) {
    if (fs::exists(dir / name)) return true;
  }
  return false;
}

/// A class name as a folder can hold it: '/' is not allowed in file names.
std::string folder_safe(std::string name) {
  std::replace(name.begin(), name.end(), '/', '_');
  return name;
}

Dataset index_select(const Dataset& data, const std::vector<int64_t>& indices) {
  Dataset out = data;
  at::Tensor index = torch::tensor(indices, torch::kInt64);
  out.images = data.images.index_select(0, index).contiguous();
  out.labels = data.labels.index_select(0, index).contiguous();
  return out;
}

}  // namespace

bool has_test_split(const std::string& path) {
  const fs::path p(path);
  if (is_idx_dir(p)) return fs::exists(p / "t10k-images-idx3-ubyte") ||
                            fs::exists(p / "t10k-images-idx3-ubyte.gz");
  if (is_cifar10_dir(path)) return fs::exists(p / "test_batch.bin");
  if (is_cifar100_dir(path)) return true;
  return fs::is_directory(p / "test");
}

Dataset load_data(const std::string& path, const std::string& split, const DataOptions& options,
                  std::vector<std::string>* skipped) {
  check_input(split == "train" || split == "test" || split == "t10k",
              "--split: '{}', expected train or test", split);
  const bool train = split == "train";
  check_input(fs::exists(path), "{}: no such directory", path);
  check_input(fs::is_directory(path), "{}: expected a directory holding a data set", path);
  const fs::path p(path);
  if (is_idx_dir(p)) return load_idx_split(path, train ? "train" : "t10k", options.limit);
  if (is_cifar10_dir(path)) return load_cifar10(path, train ? "train" : "test", options.limit);
  if (is_cifar100_dir(path)) {
    return load_cifar100(path, train ? "train" : "test", options.cifar_label, options.limit);
  }
  if (fs::is_directory(p / "train") || fs::is_directory(p / "test")) {
    const fs::path sub = p / (train ? "train" : "test");
    check_input(fs::is_directory(sub), "{}: no {} folder next to {}", path,
                sub.filename().string(), train ? "test" : "train");
    return take_first(load_image_folder(sub.string(), options.folder, skipped), options.limit);
  }
  if (is_image_folder(path)) {
    return take_first(load_image_folder(path, options.folder, skipped), options.limit);
  }
  throw InputError(fmt::format(
      "{}: not a data set: expected IDX files (train-images-idx3-ubyte...), CIFAR batches "
      "(data_batch_1.bin... or train.bin/test.bin) or class folders",
      path));
}

std::pair<Dataset, Dataset> stratified_split(const Dataset& data, double fraction, uint64_t seed) {
  check_input(fraction > 0.0 && fraction < 1.0, "split fraction {}, expected a value in (0, 1)",
              fraction);
  const int64_t n = data.size();
  const int64_t* labels = data.labels.data_ptr<int64_t>();
  std::map<int64_t, std::vector<int64_t>> by_class;
  for (int64_t i = 0; i < n; ++i) by_class[labels[i]].push_back(i);
  std::mt19937_64 rng(seed);
  std::vector<bool> held(static_cast<size_t>(n), false);
  for (auto& [label, members] : by_class) {
    std::shuffle(members.begin(), members.end(), rng);
    const auto take = static_cast<size_t>(std::llround(fraction * static_cast<double>(members.size())));
    for (size_t j = 0; j < take; ++j) held[static_cast<size_t>(members[j])] = true;
  }
  std::vector<int64_t> first, second;
  for (int64_t i = 0; i < n; ++i) (held[static_cast<size_t>(i)] ? second : first).push_back(i);
  check_input(!first.empty() && !second.empty(),
              "{}: splitting {} images with fraction {} leaves one side empty", data.source, n,
              fraction);
  return {index_select(data, first), index_select(data, second)};
}

bool align_class_names(Dataset& data, const std::vector<std::string>& class_names) {
  std::vector<int64_t> mapping;
  for (const std::string& name : data.class_names) {
    auto it = std::find_if(class_names.begin(), class_names.end(), [&](const std::string& c) {
      return folder_safe(c) == folder_safe(name);
    });
    if (it == class_names.end()) return false;
    mapping.push_back(it - class_names.begin());
  }
  at::Tensor map = torch::tensor(mapping, torch::kInt64);
  data.labels = map.index_select(0, data.labels).contiguous();
  data.class_names = class_names;
  return true;
}

}  // namespace patchwise
