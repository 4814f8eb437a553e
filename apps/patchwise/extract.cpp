// patchwise extract: writes images of a data set as PNG files, to look at, to feed
// to predict, or (--all) as an image-folder copy of a whole split.

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/data/image.h"
#include "patchwise/data/source.h"

namespace patchwise::cli {
namespace {

namespace fs = std::filesystem;

struct ExtractFlags {
  std::string data;
  std::string split = "test";
  std::vector<int64_t> indices;
  bool all = false;
  std::string out;
  DataFlags data_flags;
};

std::string folder_name(std::string name) {
  std::replace(name.begin(), name.end(), '/', '_');
  return name;
}

void run_extract(const ExtractFlags& f, const CLI::App* app) {
  check_input(f.all != !f.indices.empty(), "--index / --all: give exactly one of them");
  Dataset data = load_data_reporting(f.data, f.split, data_options(f.data_flags, 0));
  const bool many = f.indices.size() > 1;
  if (many || f.all) {
    check_input(
        fs::is_directory(f.out) || fs::create_directories(f.out),
        "--out: cannot create folder {}",
        f.out);
  }
  for (int64_t index : f.indices) {
    check_input(
        index >= 0 && index < data.size(),
        "--index: {} out of range, {} has {} images",
        index,
        f.data,
        data.size());
  }
  if (f.all) {
    // OUT/<split>/<class>/<index>.png: an image folder holding the whole split.
    const std::string split = f.split == "train" ? "train" : "test";
    for (const std::string& name : data.class_names) {
      fs::create_directories(fs::path(f.out) / split / folder_name(name));
    }
    const int64_t* labels = data.labels.data_ptr<int64_t>();
    for (int64_t i = 0; i < data.size(); ++i) {
      write_image(
          (fs::path(f.out) / split / folder_name(data.class_names[labels[i]]) /
           fmt::format("{:05}.png", i))
              .string(),
          data.image(i));
    }
    fmt::print(
        "extract: {} images of {} ({}) -> {}/{}/<class>/\n",
        data.size(),
        f.data,
        split,
        f.out,
        split);
    return;
  }
  for (int64_t index : f.indices) {
    const int64_t label = data.labels[index].item<int64_t>();
    const std::string path =
        many ? (fs::path(f.out) / fmt::format("{}-{}-{}.png", f.split, index, label)).string()
             : f.out;
    write_image(path, data.image(index));
    fmt::print("{} (index {}, label {} {})\n", path, index, label, data.class_names[label]);
  }
}

}  // namespace

void setup_extract(CLI::App& app) {
  auto flags = std::make_shared<ExtractFlags>();
  CLI::App* cmd = app.add_subcommand("extract", "write images of a data set as PNG files");
  cmd->add_option("--data", flags->data, "data set folder: IDX, CIFAR or class folders")
      ->required();
  cmd->add_option("--split", flags->split, "test (t10k) or train");
  cmd->add_option("--index", flags->indices, "image indices");
  cmd->add_flag("--all", flags->all, "every image, as OUT/<split>/<class>/<index>.png");
  cmd->add_option("--out,-o", flags->out, "PNG file (one index) or folder (several, or --all)")
      ->required();
  add_data_flags(cmd, flags->data_flags);
  cmd->callback([flags, cmd] { run_extract(*flags, cmd); });
}

}  // namespace patchwise::cli
