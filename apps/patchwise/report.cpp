// patchwise report: one self-contained HTML page about a model on a data set.

#include <fmt/format.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/base/runtime.h"
#include "patchwise/data/source.h"
#include "patchwise/model/model_file.h"
#include "patchwise/report/html_report.h"

namespace patchwise::cli {
namespace {

struct ReportFlags {
  std::string model;
  std::string data;
  std::string split = "test";
  int64_t limit = 0;
  std::string out = "report.html";
  ReportOptions options;
  DataFlags data_flags;
  bool labels_by_index = false;
  RegionReaderOptions reader;
  RuntimeFlags runtime;
};

void run_report(ReportFlags f) {
  check_output_writable(f.out, "--out");
  const c10::Device device = resolve_device(f.runtime.device);
  apply_runtime_flags(f.runtime);
  ModelFile file = load_model_file(f.model);
  PatchClassifier model = file.model;
  const nlohmann::json& training = file.training;
  const bool tiled = model->config().tiled;
  DataOptions options = data_options(f.data_flags, f.limit);
  options.folder.list_only = tiled;  // a tiled model reads each image's tiles itself
  Dataset data = load_data_reporting(f.data, f.split, options);
  match_labels(data, model->config(), f.data, f.labels_by_index);
  model->to(device);
  model->set_precision(runtime_precision(f.runtime, device));
  f.options.model_path = f.model;
  if (training.is_null() || !training.contains("history")) {
    fmt::print(
        stderr, "report: {} has no training history; the report omits the curves\n", f.model);
  }
  check_dataset_fits(model->config(), data);
  const std::string html = tiled ? build_bag_report(model, data, training, f.options, f.reader)
                                 : build_html_report(model, data, training, f.options);
  write_file_atomically(f.out, "--out", [&](std::ostream& out) { out << html; });
  fmt::print(
      "report: {} ({} KiB) for {} on {} images of {}\n",
      f.out,
      html.size() / 1024,
      f.model,
      data.size(),
      f.data);
}

}  // namespace

void setup_report(CLI::App& app) {
  auto flags = std::make_shared<ReportFlags>();
  CLI::App* cmd = app.add_subcommand("report", "write a self-contained HTML report of a model");
  cmd->add_option("--model,-m", flags->model, "model file written by train")->required();
  cmd->add_option(
         "--data",
         flags->data,
         "data set folder: IDX, CIFAR or class folders (a tiled model: large images)")
      ->required();
  cmd->add_option("--split", flags->split, "test (t10k) or train");
  cmd->add_option("--limit", flags->limit, "use the first N images; 0: all")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--out,-o", flags->out, "HTML file to write");
  cmd->add_option("--title", flags->options.title, "page title");
  cmd->add_option("--gallery", flags->options.gallery, "images in the gallery")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--mistakes", flags->options.mistakes, "most confident mistakes shown")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--heatmaps", flags->options.heatmaps, "images with a heatmap")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--heatmap-stride", flags->options.heatmap_stride, "stride of the heatmaps")
      ->check(CLI::PositiveNumber);
  add_data_flags(cmd, flags->data_flags);
  add_labels_by_index_flag(cmd, flags->labels_by_index);
  add_reader_flags(cmd, flags->reader);
  add_runtime_flags(cmd, flags->runtime);
  cmd->callback([flags] { run_report(*flags); });
}

}  // namespace patchwise::cli
