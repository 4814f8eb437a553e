#include "patchwise/data/source.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <random>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/data/idx.h"
#include "patchwise/data/manifest.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;

bool is_idx_dir(const fs::path& dir) {
  if (!fs::is_directory(dir)) return false;
  for (const char* name :
       {"train-images-idx3-ubyte",
        "train-images-idx3-ubyte.gz",
        "t10k-images-idx3-ubyte",
        "t10k-images-idx3-ubyte.gz"}) {
    if (fs::exists(dir / name)) return true;
  }
  return false;
}

/// A class name as a folder can hold it: '/' is not allowed in file names.
std::string folder_safe(std::string name) {
  std::replace(name.begin(), name.end(), '/', '_');
  return name;
}

/// One data-set format: how it is recognized, whether it holds a test split, and how a
/// split is loaded. load_data and has_test_split go through this table, in order.
struct DataFormat {
  const char* name;
  const char* looks_like;
  std::function<bool(const std::string&)> recognizes;
  std::function<bool(const std::string&)> has_test;
  std::function<Dataset(
      const std::string&, bool test, const DataOptions&, std::vector<std::string>*)>
      load;
};

bool exists_in(const fs::path& dir, const char* name) { return fs::exists(dir / name); }

bool has_split_folders(const std::string& path) {
  return fs::is_directory(fs::path(path) / "train") || fs::is_directory(fs::path(path) / "test");
}

Dataset load_split_folder(
    const std::string& path, bool test, const DataOptions& options,
    std::vector<std::string>* skipped) {
  const fs::path sub = fs::path(path) / (test ? "test" : "train");
  check_input(
      fs::is_directory(sub),
      "{}: no {} folder next to {}",
      path,
      sub.filename().string(),
      test ? "train" : "test");
  return take_first(load_image_folder(sub.string(), options.folder, skipped), options.limit);
}

const std::vector<DataFormat>& data_formats() {
  static const std::vector<DataFormat> formats = {
      {"IDX",
       "train-images-idx3-ubyte[.gz] ...",
       [](const std::string& p) { return is_idx_dir(p); },
       [](const std::string& p) {
         return exists_in(p, "t10k-images-idx3-ubyte") || exists_in(p, "t10k-images-idx3-ubyte.gz");
       },
       [](const std::string& p, bool test, const DataOptions& o, std::vector<std::string>*) {
         return load_idx_split(p, test ? "t10k" : "train", o.limit);
       }},
      {"CIFAR-10",
       "data_batch_1.bin ...",
       is_cifar10_dir,
       [](const std::string& p) { return exists_in(p, "test_batch.bin"); },
       [](const std::string& p, bool test, const DataOptions& o, std::vector<std::string>*) {
         return load_cifar10(p, test ? "test" : "train", o.limit);
       }},
      {"CIFAR-100",
       "train.bin, test.bin",
       is_cifar100_dir,
       [](const std::string&) { return true; },
       [](const std::string& p, bool test, const DataOptions& o, std::vector<std::string>*) {
         return load_cifar100(p, test ? "test" : "train", o.cifar_label, o.limit);
       }},
      {"manifest",
       "a .csv file of path,label[,split]",
       is_manifest,
       manifest_has_test,
       [](const std::string& p,
          bool test,
          const DataOptions& o,
          std::vector<std::string>* skipped) {
         return take_first(
             pack_images(read_manifest(p, test ? "test" : "train"), o.folder, skipped), o.limit);
       }},
      {"split image folders",
       "train/<class>/*, test/<class>/*",
       has_split_folders,
       [](const std::string& p) { return fs::is_directory(fs::path(p) / "test"); },
       load_split_folder},
      {"image folder",
       "<class>/*",
       is_image_folder,
       [](const std::string&) { return false; },
       [](const std::string& p, bool, const DataOptions& o, std::vector<std::string>* skipped) {
         return take_first(load_image_folder(p, o.folder, skipped), o.limit);
       }},
  };
  return formats;
}

/// The first format of the table that recognizes `path`, or null.
const DataFormat* find_format(const std::string& path) {
  for (const DataFormat& f : data_formats()) {
    if (f.recognizes(path)) return &f;
  }
  return nullptr;
}

}  // namespace

bool has_test_split(const std::string& path) {
  const DataFormat* format = find_format(path);
  return format != nullptr && format->has_test(path);
}

Dataset load_data(
    const std::string& path, const std::string& split, const DataOptions& options,
    std::vector<std::string>* skipped) {
  check_option(
      split == "train" || split == "test" || split == "t10k",
      "split",
      "'{}', expected train or test",
      split);
  const std::string found = not_a_regular_file(path);
  check_input(
      found.empty() || found == "a directory",
      "{}: {}, expected a data set folder or manifest",
      printable(path),
      found == "nothing" ? "no such file or folder" : "found " + found);
  const DataFormat* format = find_format(path);
  if (format != nullptr) {
    Dataset data = format->load(path, split != "train", options, skipped);
    check_input(
        static_cast<int64_t>(data.class_names.size()) <= options.max_classes,
        "{}: {} classes, expected at most {} (--max-classes)",
        printable(path),
        data.class_names.size(),
        options.max_classes);
    return data;
  }
  std::string expected;
  for (const DataFormat& f : data_formats()) {
    expected += fmt::format("{}{} ({})", expected.empty() ? "" : ", ", f.name, f.looks_like);
  }
  throw InputError(fmt::format("{}: not a data set: expected one of {}", path, expected));
}

std::pair<Dataset, Dataset> stratified_split(const Dataset& data, double fraction, uint64_t seed) {
  check_input(
      fraction > 0.0 && fraction < 1.0, "split fraction {}, expected a value in (0, 1)", fraction);
  const int64_t n = data.size();
  const int64_t* labels = data.labels.data_ptr<int64_t>();
  std::map<int64_t, std::vector<int64_t>> by_class;
  for (int64_t i = 0; i < n; ++i) by_class[labels[i]].push_back(i);
  std::mt19937_64 rng(seed);
  std::vector<bool> held(static_cast<size_t>(n), false);
  for (auto& [label, members] : by_class) {
    std::shuffle(members.begin(), members.end(), rng);
    const auto take =
        static_cast<size_t>(std::llround(fraction * static_cast<double>(members.size())));
    for (size_t j = 0; j < take; ++j) held[static_cast<size_t>(members[j])] = true;
  }
  std::vector<int64_t> first, second;
  for (int64_t i = 0; i < n; ++i) (held[static_cast<size_t>(i)] ? second : first).push_back(i);
  check_input(
      !first.empty() && !second.empty(),
      "{}: splitting {} images with fraction {} leaves one side empty",
      data.source,
      n,
      fraction);
  return {subset(data, first), subset(data, second)};
}

std::string first_unknown_class_name(
    const Dataset& data, const std::vector<std::string>& class_names) {
  for (const std::string& name : data.class_names) {
    const bool known = std::any_of(class_names.begin(), class_names.end(), [&](const auto& c) {
      return folder_safe(c) == folder_safe(name);
    });
    if (!known) return name;
  }
  return "";
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
