// patchwise eval: accuracy of a saved model on an IDX split.

#include <fmt/format.h>
#include <torch/torch.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/runtime.h"
#include "patchwise/model/bag_options.h"
#include "patchwise/model/evaluation.h"
#include "patchwise/model/model_file.h"
#include "patchwise/patch/bags.h"

namespace patchwise::cli {
namespace {

struct EvalFlags {
  std::string model;
  std::string data;
  std::string split = "test";
  int64_t limit = 0;
  DataFlags data_flags;
  int64_t batch = 256;
  std::string fusion;
  bool labels_by_index = false;
  bool json = false;
  RuntimeFlags runtime;
};

void run_eval(const EvalFlags& f) {
  const c10::Device device = resolve_device(f.runtime.device);
  apply_runtime_flags(f.runtime);
  PatchClassifier model = load_model(f.model);
  const ModelConfig& config = model->config();
  DataOptions options = data_options(f.data_flags, f.limit);
  options.folder.list_only = config.tiled;  // a tiled model reads each image's tiles itself
  Dataset data = load_data_reporting(f.data, f.split, options);
  BagFn bags;
  auto tally = std::make_shared<FilterTally>();
  if (config.tiled) bags = bag_reader(data, model_bag_options(config), 0, tally);
  match_labels(data, config, f.data, f.labels_by_index);
  model->to(device);
  model->set_precision(runtime_precision(f.runtime, device));
  const bool all_rules = f.fusion == "all";
  if (!f.fusion.empty() && !all_rules) model->set_fusion(parse_fusion_rule(f.fusion));
  Evaluation e = evaluate(model, data, f.batch, all_rules, bags);
  tally->say_once("eval", config.tiles.min_foreground);
  if (f.json) {
    nlohmann::json out = e.to_json();
    out["model"] = f.model;
    out["data"] = f.data;
    out["split"] = f.split;
    out["in_memory"] = data.in_memory();
    print_json(out);
    return;
  }
  fmt::print(
      "model            {} ({}, {})\n",
      f.model,
      config.backbone.name,
      config.tiled
          ? fmt::format("bags of tiles of {} resized to {}", config.tiles.tile, config.grid.input)
          : model->grid().describe());
  fmt::print(
      "data             {} ({}{})\n",
      f.data,
      f.split,
      config.tiled       ? "; each image read as its bag of tiles"
      : data.in_memory() ? ""
                         : "; decoded from its files batch by batch");
  e.print(std::cout);
}

}  // namespace

void setup_eval(CLI::App& app) {
  auto flags = std::make_shared<EvalFlags>();
  CLI::App* cmd = app.add_subcommand("eval", "evaluate a model: accuracy, per class, confusion");
  cmd->add_option("--model,-m", flags->model, "model file written by train")->required();
  cmd->add_option("--data", flags->data, "data set folder: IDX, CIFAR or class folders")
      ->required();
  cmd->add_option("--split", flags->split, "test (t10k) or train");
  add_data_flags(cmd, flags->data_flags);
  add_labels_by_index_flag(cmd, flags->labels_by_index);
  cmd->add_option("--limit", flags->limit, "use the first N images; 0: all")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", flags->batch, "images per forward pass")->check(CLI::PositiveNumber);
  cmd->add_option(
      "--fusion",
      flags->fusion,
      "fuse with this rule instead of the model's own (mean, gmean, max, vote), or "
      "'all': a table of every rule and of each patch position alone");
  cmd->add_flag("--json", flags->json, "print one JSON object");
  add_runtime_flags(cmd, flags->runtime);
  cmd->callback([flags] { run_eval(*flags); });
}

}  // namespace patchwise::cli
