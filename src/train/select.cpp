#include "patchwise/train/select.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>

#include "patchwise/patch/bags.h"

namespace patchwise {
namespace {

/// Per padded bag position: how much the model says the tile matters. [B,P]
at::Tensor tile_scores(
    PatchClassifier& model, const at::Tensor& tiles, const std::vector<int64_t>& counts) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  PaddedBags bags = pad_bags(model->tile_features(tiles), counts);
  PatchOutput out = model->head(bags.values, bags.mask);
  if (was_training) model->train();
  return out.attention.defined() ? out.attention
                                 : std::get<0>(torch::softmax(out.patch_logits, 2).max(2));
}

}  // namespace

Selection select_tiles(
    PatchClassifier& model, const at::Tensor& tiles, const std::vector<int64_t>& counts,
    int64_t keep) {
  TORCH_CHECK(keep >= 1, "select_tiles: keep ", keep, ", expected >= 1");
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  Selection s;
  if (std::all_of(counts.begin(), counts.end(), [&](int64_t n) { return n <= keep; })) {
    s.tiles = tiles;
    s.counts = counts;
    s.rows = torch::arange(total, torch::kInt64);
    return s;
  }
  const at::Tensor scores = tile_scores(model, tiles, counts).to(torch::kCPU, torch::kFloat32);
  std::vector<int64_t> rows;
  int64_t start = 0;
  for (size_t b = 0; b < counts.size(); ++b) {
    const int64_t n = counts[b];
    const int64_t k = std::min(n, keep);
    at::Tensor best = std::get<1>(scores[static_cast<int64_t>(b)].narrow(0, 0, n).topk(k));
    best = std::get<0>(best.sort());
    for (int64_t i = 0; i < k; ++i) rows.push_back(start + best[i].item<int64_t>());
    s.counts.push_back(k);
    start += n;
  }
  s.rows = torch::tensor(rows, torch::kInt64);
  s.tiles = tiles.index_select(0, s.rows.to(tiles.device()));
  return s;
}

}  // namespace patchwise
