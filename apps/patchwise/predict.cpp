// patchwise predict: per-patch and fused probabilities for image files.

#include <fmt/format.h>
#include <torch/torch.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/runtime.h"
#include "patchwise/data/image.h"
#include "patchwise/model/bag_options.h"
#include "patchwise/model/model_file.h"
#include "patchwise/patch/bags.h"

namespace patchwise::cli {
namespace {

struct PredictFlags {
  std::string model;
  std::vector<std::string> images;
  bool json = false;
  int64_t top = 5;
  TileFlags tiles;  ///< only the reader's flags apply: the model decides the tiles
  RuntimeFlags runtime;
};

void print_table(const nlohmann::json& r, const std::vector<std::string>& classes) {
  const int64_t winner = r["class"].get<int64_t>();
  fmt::print(
      "{}: {} (class {}), probability {:.4f}\n",
      r["file"].get<std::string>(),
      r["label"].get<std::string>(),
      winner,
      r["probability"].get<double>());
  size_t width = 5;
  for (const auto& n : classes) width = std::max(width, n.size());
  const auto& patch_probs = r["patch_probabilities"];
  fmt::print("  {:<{}}", "class", width);
  for (size_t p = 0; p < patch_probs.size(); ++p)
    fmt::print(" {:>8}", fmt::format("patch{}", p + 1));
  fmt::print(" {:>8}\n", "fused");
  for (size_t k = 0; k < classes.size(); ++k) {
    fmt::print("{} {:<{}}", static_cast<int64_t>(k) == winner ? '*' : ' ', classes[k], width);
    for (const auto& pp : patch_probs) fmt::print(" {:>8.4f}", pp[k].get<double>());
    fmt::print(" {:>8.4f}\n", r["probabilities"][k].get<double>());
  }
}

/// A tiled model's answer for one large image: its bag through the model, the class,
/// and the `top` tiles by score (attention weight, or the class's probability).
nlohmann::json predict_tiled(
    PatchClassifier& model, const std::string& file, const PredictFlags& f, FilterTally& tally,
    int64_t index) {
  const Bag bag = read_bag(file, model_bag_options(model->config(), f.tiles.reader));
  tally.add(index, bag);
  return bag_prediction_json(model->config(), file, bag, predict_bag(model, bag.tiles, -1), f.top);
}

void print_tiled(const nlohmann::json& r) {
  fmt::print(
      "{}: {} (class {}), probability {:.4f}, from {} tiles\n",
      r["file"].get<std::string>(),
      r["label"].get<std::string>(),
      r["class"].get<int64_t>(),
      r["probability"].get<double>(),
      r["tiles"].get<int64_t>());
  fmt::print("  top tiles by {} (x, y, w, h in level-0 pixels):\n", r["score"].get<std::string>());
  for (const auto& t : r["top_tiles"]) {
    fmt::print(
        "    {:>7} {:>7} {:>5} {:>5}  {:.4f}\n",
        t["x"].get<int64_t>(),
        t["y"].get<int64_t>(),
        t["w"].get<int64_t>(),
        t["h"].get<int64_t>(),
        t["score"].get<double>());
  }
}

void run_predict(const PredictFlags& f) {
  const c10::Device device = resolve_device(f.runtime.device);
  apply_runtime_flags(f.runtime);
  PatchClassifier model = load_model(f.model);
  model->to(device);
  model->set_precision(runtime_precision(f.runtime, device));
  model->eval();
  const ModelConfig& config = model->config();
  if (config.tiled) {
    nlohmann::json results = nlohmann::json::array();
    FilterTally tally;
    for (const std::string& file : f.images) {
      results.push_back(predict_tiled(model, file, f, tally, static_cast<int64_t>(results.size())));
    }
    tally.say_once("predict", config.tiles.min_foreground);
    if (f.json) return print_json(results);
    for (const auto& r : results) print_tiled(r);
    return;
  }

  // Every file is read and checked before anything is printed.
  std::vector<at::Tensor> images;
  for (const std::string& file : f.images) {
    at::Tensor image = read_image(file, config.image_channels);
    if (image.size(1) != config.image_h || image.size(2) != config.image_w) {
      fmt::print(
          stderr,
          "predict: {}: resizing {}x{} to the model's {}x{}\n",
          file,
          image.size(1),
          image.size(2),
          config.image_h,
          config.image_w);
      image = resize_image(image, config.image_h, config.image_w);
    }
    images.push_back(image);
  }

  nlohmann::json results = nlohmann::json::array();
  torch::InferenceMode guard;
  for (size_t i = 0; i < images.size(); ++i) {
    const PatchOutput out = model->forward(images[i].unsqueeze(0));
    results.push_back(
        grid_prediction_json(*model, f.images[i], out.patch_logits[0], out.log_probs[0]));
  }
  if (f.json) return print_json(results);
  for (const auto& r : results) print_table(r, config.class_names);
}

}  // namespace

void setup_predict(CLI::App& app) {
  auto flags = std::make_shared<PredictFlags>();
  CLI::App* cmd = app.add_subcommand("predict", "classify image files (PNG, JPEG)");
  cmd->add_option("--model,-m", flags->model, "model file written by train")->required();
  cmd->add_option("images", flags->images, "image files")->required();
  cmd->add_flag("--json", flags->json, "print a JSON array, one object per image");
  cmd->add_option("--top", flags->top, "tiled models: the tiles listed, best first")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  add_reader_flags(cmd, flags->tiles.reader);
  add_runtime_flags(cmd, flags->runtime);
  cmd->callback([flags] { run_predict(*flags); });
}

}  // namespace patchwise::cli
