#include "patchwise/report/prediction.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>

#include "patchwise/base/error.h"

namespace patchwise {
namespace {

std::vector<double> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

BagPrediction predict_bag(PatchClassifier& model, const at::Tensor& tiles, int64_t target_class) {
  const ModelConfig& config = model->config();
  check_input(
      target_class >= -1 && target_class < model->num_classes(),
      "--class: {}, expected -1 or 0..{}",
      target_class,
      model->num_classes() - 1);
  torch::InferenceMode guard;
  PatchOutput out = model->forward_bags(tiles.to(model->device()), {tiles.size(0)});
  BagPrediction p;
  p.probabilities = to_vector(out.log_probs[0].exp());
  p.winner = out.log_probs[0].argmax().item<int64_t>();
  p.target = target_class >= 0 ? target_class : p.winner;
  p.scores = to_vector(
      out.attention.defined() ? out.attention[0]
                              : torch::softmax(out.patch_logits[0], 1).select(1, p.target));
  p.score_name = out.attention.defined()
                     ? "attention"
                     : fmt::format("p({})", config.class_names[static_cast<size_t>(p.target)]);
  return p;
}

std::vector<int64_t> top_tiles(const std::vector<double>& scores, int64_t top) {
  std::vector<int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  const auto k = std::min<size_t>(static_cast<size_t>(std::max<int64_t>(top, 0)), order.size());
  std::partial_sort(
      order.begin(),
      order.begin() + static_cast<std::ptrdiff_t>(k),
      order.end(),
      [&](int64_t a, int64_t b) {
        return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)];
      });
  order.resize(k);
  return order;
}

std::vector<nlohmann::json> grid_predictions_json(
    const PatchClassifierImpl& model, const std::vector<std::string>& files,
    const at::Tensor& patch_logits, const at::Tensor& log_probs) {
  const ModelConfig& config = model.config();
  // Two conversions for the whole batch; the rows are then read from memory.
  const at::Tensor pp =
      torch::softmax(patch_logits, 2).to(torch::kCPU, torch::kFloat64).contiguous();
  const at::Tensor fused = log_probs.exp().to(torch::kCPU, torch::kFloat64).contiguous();
  const int64_t n = pp.size(0), patches = pp.size(1), k = pp.size(2);
  const double* patch_data = pp.data_ptr<double>();
  const double* fused_data = fused.data_ptr<double>();
  std::vector<nlohmann::json> out;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<std::vector<double>> patch_probs;
    nlohmann::json boxes = nlohmann::json::array();
    for (int64_t p = 0; p < patches; ++p) {
      const double* row = patch_data + (i * patches + p) * k;
      patch_probs.emplace_back(row, row + k);
      const PatchBox& b = model.grid().boxes()[static_cast<size_t>(p)];
      boxes.push_back(
          {{"x", b.x},
           {"y", b.y},
           {"w", b.w},
           {"h", b.h},
           {"flip", b.flip},
           {"probabilities", patch_probs.back()}});
    }
    const std::vector<double> probs(fused_data + i * k, fused_data + (i + 1) * k);
    const auto winner =
        static_cast<size_t>(std::max_element(probs.begin(), probs.end()) - probs.begin());
    out.push_back(
        {{"file", files[static_cast<size_t>(i)]},
         {"patches", boxes},
         {"patch_probabilities", patch_probs},
         {"probabilities", probs},
         {"class", winner},
         {"label", config.class_names[winner]},
         {"probability", probs[winner]}});
  }
  return out;
}

nlohmann::json grid_prediction_json(
    const PatchClassifierImpl& model, const std::string& file, const at::Tensor& patch_logits,
    const at::Tensor& log_probs) {
  return grid_predictions_json(model, {file}, patch_logits.unsqueeze(0), log_probs.unsqueeze(0))[0];
}

nlohmann::json bag_prediction_json(
    const ModelConfig& config, const std::string& file, const Bag& bag, const BagPrediction& p,
    int64_t top) {
  nlohmann::json tiles = nlohmann::json::array();
  for (int64_t t : top_tiles(p.scores, top)) {
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

}  // namespace patchwise
