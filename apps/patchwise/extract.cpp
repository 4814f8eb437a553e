// patchwise extract: writes images of an IDX data set as PNG files, to look at or
// to feed to predict.

#include <filesystem>

#include <fmt/format.h>
#include <torch/torch.h>

#include "commands.h"
#include "patchwise/core/error.h"
#include "patchwise/data/idx.h"
#include "patchwise/data/image.h"

namespace patchwise::cli {
namespace {

struct ExtractFlags {
  std::string data;
  std::string split = "t10k";
  std::vector<int64_t> indices;
  std::string out;
};

void run_extract(const ExtractFlags& f) {
  check_input(f.split == "t10k" || f.split == "train", "--split: '{}', expected t10k or train",
              f.split);
  Dataset data = load_idx_split(f.data, f.split);
  const bool many = f.indices.size() > 1;
  if (many) {
    check_input(std::filesystem::is_directory(f.out),
                "--out: {} must be an existing folder when several indices are given", f.out);
  }
  for (int64_t index : f.indices) {
    check_input(index >= 0 && index < data.size(), "--index: {} out of range, {} has {} images",
                index, f.data, data.size());
  }
  for (int64_t index : f.indices) {
    const int64_t label = data.labels[index].item<int64_t>();
    std::string path = many ? (std::filesystem::path(f.out) /
                               fmt::format("{}-{}-{}.png", f.split, index, label))
                                  .string()
                            : f.out;
    write_image(path, data.images[index]);
    fmt::print("{} (index {}, label {} {})\n", path, index, label, data.class_names[label]);
  }
}

}  // namespace

void setup_extract(CLI::App& app) {
  auto flags = std::make_shared<ExtractFlags>();
  CLI::App* cmd = app.add_subcommand("extract", "write images of an IDX data set as PNG files");
  cmd->add_option("--data", flags->data, "folder with IDX files")->required();
  cmd->add_option("--split", flags->split, "t10k (test) or train");
  cmd->add_option("--index", flags->indices, "image indices")->required();
  cmd->add_option("--out,-o", flags->out, "PNG file (one index) or folder (several)")->required();
  cmd->callback([flags] { run_extract(*flags); });
}

}  // namespace patchwise::cli
