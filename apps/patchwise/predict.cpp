// patchwise predict: per-patch and fused probabilities for image files.

#include <fmt/format.h>
#include <torch/torch.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "patchwise/core/error.h"
#include "patchwise/core/model_file.h"
#include "patchwise/core/runtime.h"
#include "patchwise/data/image.h"
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

std::vector<double> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

void print_table(
    const std::string& file, const std::vector<std::string>& names,
    const std::vector<std::vector<double>>& patch_probs, const std::vector<double>& probs,
    int64_t winner) {
  fmt::print("{}: {} (class {}), probability {:.4f}\n", file, names[winner], winner, probs[winner]);
  size_t width = 5;
  for (const auto& n : names) width = std::max(width, n.size());
  fmt::print("  {:<{}}", "class", width);
  for (size_t p = 0; p < patch_probs.size(); ++p)
    fmt::print(" {:>8}", fmt::format("patch{}", p + 1));
  fmt::print(" {:>8}\n", "fused");
  for (size_t k = 0; k < names.size(); ++k) {
    fmt::print("{} {:<{}}", static_cast<int64_t>(k) == winner ? '*' : ' ', names[k], width);
    for (const auto& pp : patch_probs) fmt::print(" {:>8.4f}", pp[k]);
    fmt::print(" {:>8.4f}\n", probs[k]);
  }
}

/// A tiled model's answer for one large image: its bag through the model, the class,
/// and the `top` tiles by score (attention weight, or the class's probability).
nlohmann::json predict_tiled(
    PatchClassifier& model, const std::string& file, const PredictFlags& f) {
  const ModelConfig& config = model->config();
  const Bag bag = read_bag(file, model_bag_options(config, f.tiles.reader));
  const BagPrediction p = predict_bag(model, bag.tiles, -1);
  nlohmann::json tiles = nlohmann::json::array();
  for (int64_t t : top_tiles(p.scores, f.top)) {
    const Box& b = bag.boxes[static_cast<size_t>(t)];
    tiles.push_back(
        {{"x", b.x},
         {"y", b.y},
         {"w", b.w},
         {"h", b.h},
         {"score", p.scores[static_cast<size_t>(t)]}});
  }
  return {
      {"file", file},
      {"tiles", bag.tiles.size(0)},
      {"level", bag.level},
      {"probabilities", p.probabilities},
      {"class", p.winner},
      {"label", config.class_names[static_cast<size_t>(p.winner)]},
      {"probability", p.probabilities[static_cast<size_t>(p.winner)]},
      {"score", p.score_name},
      {"top_tiles", tiles}};
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
  set_threads(f.runtime.threads);
  PatchClassifier model = load_model(f.model);
  model->to(device);
  model->eval();
  const ModelConfig& config = model->config();
  if (config.tiled) {
    nlohmann::json results = nlohmann::json::array();
    for (const std::string& file : f.images) results.push_back(predict_tiled(model, file, f));
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
    PatchOutput out = model->forward(images[i].unsqueeze(0));
    std::vector<std::vector<double>> patch_probs;
    at::Tensor pp = torch::softmax(out.patch_logits[0], /*dim=*/1);
    for (int64_t p = 0; p < pp.size(0); ++p) patch_probs.push_back(to_vector(pp[p]));
    std::vector<double> probs = to_vector(out.log_probs[0].exp());
    const int64_t winner = out.log_probs[0].argmax().item<int64_t>();
    if (f.json) {
      results.push_back(
          {{"file", f.images[i]},
           {"patch_probabilities", patch_probs},
           {"probabilities", probs},
           {"class", winner},
           {"label", config.class_names[winner]},
           {"probability", probs[winner]}});
    } else {
      print_table(f.images[i], config.class_names, patch_probs, probs, winner);
    }
  }
  if (f.json) print_json(results);
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
