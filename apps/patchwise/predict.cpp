// patchwise predict: per-patch and fused probabilities for image files.

#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "commands.h"
#include "common.h"
#include "patchwise/core/error.h"
#include "patchwise/core/model_file.h"
#include "patchwise/core/runtime.h"
#include "patchwise/data/image.h"

namespace patchwise::cli {
namespace {

struct PredictFlags {
  std::string model;
  std::vector<std::string> images;
  bool json = false;
  RuntimeFlags runtime;
};

std::vector<double> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

void print_table(const std::string& file, const std::vector<std::string>& names,
                 const std::vector<std::vector<double>>& patch_probs,
                 const std::vector<double>& probs, int64_t winner) {
  fmt::print("{}: {} (class {}), probability {:.4f}\n", file, names[winner], winner,
             probs[winner]);
  size_t width = 5;
  for (const auto& n : names) width = std::max(width, n.size());
  fmt::print("  {:<{}}", "class", width);
  for (size_t p = 0; p < patch_probs.size(); ++p) fmt::print(" {:>8}", fmt::format("patch{}", p + 1));
  fmt::print(" {:>8}\n", "fused");
  for (size_t k = 0; k < names.size(); ++k) {
    fmt::print("{} {:<{}}", static_cast<int64_t>(k) == winner ? '*' : ' ', names[k], width);
    for (const auto& pp : patch_probs) fmt::print(" {:>8.4f}", pp[k]);
    fmt::print(" {:>8.4f}\n", probs[k]);
  }
}

void run_predict(const PredictFlags& f) {
  const c10::Device device = resolve_device(f.runtime.device);
  set_threads(f.runtime.threads);
  PatchClassifier model = load_model(f.model);
  model->to(device);
  const ModelConfig& config = model->config();

  // Every file is read and checked before anything is printed.
  std::vector<at::Tensor> images;
  for (const std::string& file : f.images) {
    at::Tensor image = read_image(file, config.image_channels);
    if (image.size(1) != config.image_h || image.size(2) != config.image_w) {
      fmt::print(stderr, "predict: {}: resizing {}x{} to the model's {}x{}\n", file, image.size(1),
                 image.size(2), config.image_h, config.image_w);
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
      results.push_back({{"file", f.images[i]},
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
  add_runtime_flags(cmd, flags->runtime);
  cmd->callback([flags] { run_predict(*flags); });
}

}  // namespace patchwise::cli
