// The HTML report of a tiled model on a set of large images (html_report.h).

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "html_parts.h"
#include "patchwise/data/loader.h"
#include "patchwise/model/evaluation.h"
#include "patchwise/patch/bags.h"
#include "patchwise/report/heatmap.h"
#include "patchwise/report/html_report.h"

namespace patchwise {
namespace {

using namespace html;

/// Bags per forward pass: a few hundred tiles each.
constexpr int64_t kBagsPerPass = 8;
constexpr int64_t kThumbnail = 320;
constexpr int64_t kTopTiles = 4;

/// What the evaluation's pass over the set's bags says about each image.
struct BagScores {
  at::Tensor probs;                         ///< float [N,K], fused
  std::vector<int64_t> predicted;           ///< [N]
  std::vector<std::vector<double>> scores;  ///< [N][tiles of the bag]
  int64_t tiles = 0;
  std::string score_name;
};

/// Each bag's tile scores: attention weights, or each tile's probability of the class
/// its bag is predicted as.
void add_bags(const Batch& b, const PatchOutput& out, BagScores& s) {
  const at::Tensor predicted = out.log_probs.argmax(1);
  at::Tensor scores =
      out.attention.defined()
          ? out.attention
          : torch::softmax(out.patch_logits, 2)
                .gather(2, predicted.view({-1, 1, 1}).expand({-1, out.patch_logits.size(1), 1}))
                .squeeze(2);
  scores = scores.to(torch::kCPU, torch::kFloat64).contiguous();
  const at::Tensor said = predicted.to(torch::kCPU);
  const int64_t offset = static_cast<int64_t>(s.predicted.size());
  s.probs.narrow(0, offset, b.labels.size(0)).copy_(out.log_probs.exp().to(torch::kCPU));
  for (size_t i = 0; i < b.counts.size(); ++i) {
    const double* row = scores[static_cast<int64_t>(i)].data_ptr<double>();
    s.scores.emplace_back(row, row + b.counts[i]);
    s.predicted.push_back(said[static_cast<int64_t>(i)].item<int64_t>());
    s.tiles += b.counts[i];
  }
}

/// Image i's thumbnail with its tiles' scores over it, and its top tiles as crops.
std::string bag_picture(
    const std::string& file, const std::vector<double>& scores, const BagOptions& options,
    const std::string& title) {
  std::unique_ptr<RegionReader> reader = open_region_reader(file, options.reader);
  const TilePlan plan = plan_tiles(*reader, options.tiles);  // the boxes of the bag scored
  std::vector<Box> boxes;
  for (int64_t k : plan.kept) {
    boxes.push_back(level0_box(plan.boxes[static_cast<size_t>(k)], plan.downsample));
  }
  const at::Tensor thumb = reader->thumbnail(kThumbnail);
  const Heatmap h =
      tile_heatmap(boxes, scores, reader->width(), reader->height(), thumb.size(1), thumb.size(2));
  std::vector<int64_t> top(scores.size());
  std::iota(top.begin(), top.end(), 0);
  const auto keep = static_cast<int64_t>(std::min<size_t>(top.size(), kTopTiles));
  std::partial_sort(top.begin(), top.begin() + keep, top.end(), [&](int64_t a, int64_t b) {
    return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)];
  });
  top.resize(static_cast<size_t>(keep));
  std::vector<at::Tensor> crops;
  std::vector<double> crop_scores;
  for (int64_t t : top) {
    const Box& box = plan.boxes[static_cast<size_t>(plan.kept[static_cast<size_t>(t)])];
    crops.push_back(reader->read_resized(box, plan.level, 96));
    crop_scores.push_back(scores[static_cast<size_t>(t)]);
  }
  return img_tag(render_heatmap(thumb, h, title, 1), title) +
         (crops.empty() ? "" : img_tag(render_crop_strip(crops, crop_scores), "top tiles"));
}

std::string bag_card(
    const Dataset& data, int64_t i, const BagScores& s, const std::vector<std::string>& names,
    const BagOptions& options) {
  const int64_t truth = data.labels[i].item<int64_t>();
  const int64_t said = s.predicted[static_cast<size_t>(i)];
  const at::Tensor p = s.probs[i].contiguous();
  const auto& scores = s.scores[static_cast<size_t>(i)];
  std::string c =
      "<div class=\"card\">" +
      card_title(
          i, names, truth, said, p[said].item<float>(), fmt::format("; {} tiles", scores.size()));
  const std::string& file = data.files.paths[static_cast<size_t>(i)];
  c += bag_picture(file, scores, options, fmt::format("{} / max", s.score_name));
  c += "<div>fused" + probability_bars(names, p.data_ptr<float>(), p.numel(), 3, truth) + "</div>";
  return c + "</div>";
}

}  // namespace

std::string build_bag_report(
    PatchClassifier& model, const Dataset& data, const nlohmann::json& training,
    const ReportOptions& options, const RegionReaderOptions& reader) {
  const ModelConfig& config = model->config();
  const std::vector<std::string>& names = config.class_names;
  const BagOptions bags{config.tiles, reader, config.grid.input, config.image_channels};
  BagScores s;
  s.score_name = fusion_rule_has_attention(config.fusion) ? "attention" : "p(predicted)";
  s.probs = torch::empty({data.size(), model->num_classes()});
  const Evaluation e = evaluate(
      model,
      data,
      kBagsPerPass,
      false,
      bag_reader(data, bags, 0),
      [&](const Batch& b, const PatchOutput& out) { add_bags(b, out, s); });
  const int64_t n = data.size();
  std::ostringstream out;
  out << page_start(options.title) << "<div class=\"sub\">"
      << escape(fmt::format(
             "{} — {} on bags of tiles of {} resized to {}, fusion {}; {} large "
             "images from {}",
             options.model_path,
             config.backbone.name,
             config.tiles.tile,
             config.grid.input,
             fusion_rule_name(config.fusion),
             n,
             data.source))
      << "</div>";
  out << fmt::format(
      "<div class=\"kpi\"><div>accuracy<b>{:.4f} ± {:.4f}</b></div><div>fused loss<b>{:.4f}</b>"
      "</div><div>images<b>{}</b></div><div>tiles per image<b>{:.1f}</b></div></div>",
      e.accuracy,
      e.accuracy_stderr,
      e.loss,
      n,
      static_cast<double>(s.tiles) / static_cast<double>(std::max<int64_t>(1, n)));
  out << training_curves(training) << confusion_table(names, e.confusion);
  out << "<h2>Gallery</h2><p>Each image's thumbnail with its tiles' " << escape(s.score_name)
      << " over it (divided by the largest), and its top tiles.</p><div class=\"cards\">";
  for (int64_t i = 0; i < std::min(options.gallery, n); ++i)
    out << bag_card(data, i, s, names, bags);
  out << "</div><h2>Most confident mistakes</h2>";
  const std::vector<int64_t> mistakes = confident_mistakes(
      s.probs, s.predicted.data(), data.labels.contiguous().data_ptr<int64_t>(), options.mistakes);
  if (mistakes.empty()) out << "<p>None: every image is classified correctly.</p>";
  out << "<div class=\"cards\">";
  for (int64_t i : mistakes) out << bag_card(data, i, s, names, bags);
  out << "</div></body></html>\n";
  return out.str();
}

}  // namespace patchwise
