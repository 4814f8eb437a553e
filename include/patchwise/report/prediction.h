#pragma once
// One image's answer, as `patchwise predict --json` prints it and `patchwise serve`
// returns it: per-patch and fused probabilities for a grid model; for a tiled model the
// fused probabilities of its bag and its top tiles with their boxes and scores.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "patchwise/model/patch_classifier.h"
#include "patchwise/patch/bags.h"

namespace patchwise {

/// A tiled model's answer for one bag of tiles.
struct BagPrediction {
  std::vector<double> probabilities;  ///< [K], fused
  int64_t winner = 0;                 ///< argmax
  int64_t target = 0;                 ///< the class the scores are about
  std::vector<double> scores;         ///< per tile: attention weight, or p(target)
  std::string score_name;             ///< "attention" or "p(<class>)"
};

/// Runs `tiles` (uint8 [n,C,I,I]) as one bag; target_class -1: the predicted class.
/// Throws InputError on a class outside [0, K).
BagPrediction predict_bag(PatchClassifier& model, const at::Tensor& tiles, int64_t target_class);

/// Tile indices by score, best first (ties in index order): at most `top` of them.
std::vector<int64_t> top_tiles(const std::vector<double>& scores, int64_t top);

/// A grid model's answer for one image from its rows of PatchClassifier::forward:
/// patch_logits [P,K] and log_probs [K]. Keys: file, patches (boxes in image pixels,
/// with each patch's probabilities), patch_probabilities, probabilities, class, label,
/// probability.
nlohmann::json grid_prediction_json(
    const PatchClassifierImpl& model, const std::string& file, const at::Tensor& patch_logits,
    const at::Tensor& log_probs);

/// The same for a batch: patch_logits [B,P,K] and log_probs [B,K], files[b] naming row b.
std::vector<nlohmann::json> grid_predictions_json(
    const PatchClassifierImpl& model, const std::vector<std::string>& files,
    const at::Tensor& patch_logits, const at::Tensor& log_probs);

/// A tiled model's answer for one bag. Keys: file, tiles (the count), level,
/// probabilities, class, label, probability, score (what the scores are), top_tiles
/// (x, y, w, h in level-0 pixels and score, best first, at most `top`).
nlohmann::json bag_prediction_json(
    const ModelConfig& config, const std::string& file, const Bag& bag, const BagPrediction& p,
    int64_t top);

}  // namespace patchwise
