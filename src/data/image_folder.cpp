#include "patchwise/data/image_folder.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "patchwise/base/error.h"
#include "patchwise/data/image.h"
#include "patchwise/data/region.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;

/// At most this many sizes are listed in the mixed-sizes message.
constexpr size_t kSizesListed = 5;

std::vector<fs::path> sorted_entries(const fs::path& dir, bool directories) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.') continue;  // hidden files and folders
    if (directories ? entry.is_directory() : entry.is_regular_file()) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

using SizeMap = std::map<std::pair<int64_t, int64_t>, std::string>;  // size -> first file

[[noreturn]] void throw_mixed_sizes(const std::string& source, const SizeMap& sizes) {
  std::string listed;
  size_t n = 0;
  for (const auto& [size, file] : sizes) {
    if (n++ == kSizesListed) {
      listed += ", ...";
      break;
    }
    listed +=
        fmt::format("{}{}x{} ({})", listed.empty() ? "" : ", ", size.first, size.second, file);
  }
  throw InputError(fmt::format(
      "{}: images of {} different sizes: {}; pass --image-size HxW", source, sizes.size(), listed));
}

/// The set left in its files: only each file's header is read (through the region
/// readers), with the checks pack_images makes on decoded images.
Dataset lazy_images(
    const SampleList& list, const ImageFolderOptions& options, std::vector<std::string>* skipped) {
  Dataset d;
  d.source = list.source;
  d.class_names = list.class_names;
  std::vector<int64_t> labels;
  SizeMap sizes;
  bool all_gray = true;
  for (size_t i = 0; i < list.files.size(); ++i) {
    const std::string& file = list.files[i];
    std::unique_ptr<RegionReader> header;
    try {
      header = open_region_reader(file, {"vips", 0});
    } catch (const InputError&) {
      if (options.strict) throw;
      if (skipped != nullptr) skipped->push_back(file);
      continue;
    }
    if (options.height == 0) sizes.emplace(std::make_pair(header->height(), header->width()), file);
    all_gray = all_gray && header->channels() == 1;
    d.files.paths.push_back(file);
    labels.push_back(list.labels[i]);
  }
  check_input(!labels.empty(), "{}: no readable images", list.source);
  if (sizes.size() > 1) throw_mixed_sizes(list.source, sizes);
  d.files.channels = options.channels > 0 ? options.channels : (all_gray ? 1 : 3);
  d.files.height = options.height > 0 ? options.height : sizes.begin()->first.first;
  d.files.width = options.height > 0 ? options.width : sizes.begin()->first.second;
  d.labels = torch::tensor(labels, torch::kInt64);
  return d;
}

}  // namespace

bool is_image_folder(const std::string& dir) {
  return fs::is_directory(dir) && !sorted_entries(dir, /*directories=*/true).empty();
}

SampleList list_image_folder(const std::string& root) {
  check_input(fs::is_directory(root), "{}: no such folder", root);
  const std::vector<fs::path> classes = sorted_entries(root, /*directories=*/true);
  check_input(
      !classes.empty(), "{}: no class folders, expected {}/<class>/<image files>", root, root);
  SampleList list;
  list.source = root;
  for (size_t k = 0; k < classes.size(); ++k) {
    list.class_names.push_back(classes[k].filename().string());
    const std::vector<fs::path> files = sorted_entries(classes[k], /*directories=*/false);
    check_input(
        !files.empty(), "{}: empty class folder, expected image files", classes[k].string());
    for (const fs::path& file : files) {
      list.files.push_back(file.string());
      list.labels.push_back(static_cast<int64_t>(k));
    }
  }
  return list;
}

Dataset pack_images(
    const SampleList& list, const ImageFolderOptions& options, std::vector<std::string>* skipped) {
  check_option(
      (options.height > 0) == (options.width > 0),
      "image_size",
      "{}x{}, expected HxW",
      options.height,
      options.width);
  const auto n = static_cast<int64_t>(list.files.size());
  if (options.list_only) {
    Dataset d;
    d.source = list.source;
    d.class_names = list.class_names;
    d.files.paths = list.files;
    d.files.channels = options.channels;
    d.labels = torch::tensor(list.labels, torch::kInt64);
    check_input(n > 0, "{}: no images", list.source);
    return d;
  }
  const bool over_limit = options.memory_limit > 0 && options.height > 0 &&
                          n * 3 * options.height * options.width > options.memory_limit;
  if (over_limit) return lazy_images(list, options, skipped);
  Dataset d;
  d.source = list.source;
  d.class_names = list.class_names;
  std::vector<at::Tensor> images;
  std::vector<int64_t> labels;
  SizeMap sizes;
  bool all_gray = true;
  const size_t skipped_before = skipped != nullptr ? skipped->size() : 0;
  int64_t bytes = 0;
  for (size_t i = 0; i < list.files.size(); ++i) {
    const std::string& file = list.files[i];
    at::Tensor image;
    try {
      image = read_image(file, options.channels);
    } catch (const InputError&) {
      if (options.strict) throw;
      if (skipped != nullptr) skipped->push_back(file);
      continue;
    }
    if (options.height > 0) {
      if (image.size(1) != options.height || image.size(2) != options.width) {
        image = resize_image(image, options.height, options.width);
      }
    } else {
      sizes.emplace(std::make_pair(image.size(1), image.size(2)), file);
    }
    bytes += 3 * image.size(1) * image.size(2);  // as RGB, the most it can become
    if (options.memory_limit > 0 && bytes > options.memory_limit) {
      if (skipped != nullptr) skipped->resize(skipped_before);
      return lazy_images(list, options, skipped);
    }
    all_gray = all_gray && image.size(0) == 1;
    images.push_back(image);
    labels.push_back(list.labels[i]);
  }
  check_input(!images.empty(), "{}: no readable images", list.source);
  if (sizes.size() > 1) throw_mixed_sizes(list.source, sizes);
  const int64_t channels = options.channels > 0 ? options.channels : (all_gray ? 1 : 3);
  for (at::Tensor& image : images) {
    if (image.size(0) != channels) image = image.expand({channels, image.size(1), image.size(2)});
  }
  d.images = torch::stack(images, 0).contiguous();
  d.labels = torch::tensor(labels, torch::kInt64);
  return d;
}

Dataset load_image_folder(
    const std::string& root, const ImageFolderOptions& options, std::vector<std::string>* skipped) {
  return pack_images(list_image_folder(root), options, skipped);
}

}  // namespace patchwise
