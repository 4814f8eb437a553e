#include "patchwise/report/heatmap.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <opencv2/imgproc.hpp>

#include "patchwise/base/error.h"
#include "patchwise/model/bag_options.h"
#include "patchwise/models/backbone.h"
#include "patchwise/patch/bags.h"
#include "patchwise/report/prediction.h"

namespace patchwise {
namespace {

constexpr int kBarWidth = 16;
constexpr int kTitleHeight = 22;
constexpr double kOverlayAlpha = 0.55;

}  // namespace

Heatmap compute_heatmap(
    PatchClassifier& model, const at::Tensor& image, const HeatmapOptions& options) {
  const ModelConfig& config = model->config();
  TORCH_CHECK(
      image.dim() == 3 && image.size(0) == config.image_channels &&
          image.size(1) == config.image_h && image.size(2) == config.image_w,
      "compute_heatmap expects uint8 [",
      config.image_channels,
      ",",
      config.image_h,
      ",",
      config.image_w,
      "], got ",
      image.sizes());
  const int64_t classes = model->num_classes();
  check_option(
      options.target_class >= -1 && options.target_class < classes,
      "class",
      "{} out of range, the model has classes 0..{}",
      options.target_class,
      classes - 1);
  const int64_t extent = std::min(config.image_h, config.image_w);
  check_option(
      options.grid_only || (options.stride >= 1 && options.stride <= extent),
      "stride",
      "{}, expected 1..{} (the image is {}x{})",
      options.stride,
      extent,
      config.image_h,
      config.image_w);

  torch::InferenceMode guard;
  const bool was_training = model->is_training();
  model->eval();
  at::Tensor batch = image.unsqueeze(0);
  Heatmap h;
  h.target_class = options.target_class >= 0
                       ? options.target_class
                       : model->forward(batch).log_probs.argmax(1).item<int64_t>();

  PatchGridOptions slide = config.grid;
  if (!options.grid_only) {
    slide.layout = PatchLayout::kGrid;
    slide.rows = slide.cols = 0;  // as many as the stride fits
    slide.stride_h = slide.stride_w = options.stride;
  }
  PatchGrid grid(slide, config.image_h, config.image_w);
  at::Tensor patches = grid.cut(model->normalize(batch))[0];  // [N,C,I,I]
  std::vector<at::Tensor> probs;
  for (int64_t start = 0; start < patches.size(0); start += options.batch) {
    const int64_t n = std::min(options.batch, patches.size(0) - start);
    at::Tensor logits = model->backbone().forward(patches.narrow(0, start, n));
    probs.push_back(torch::softmax(logits, 1).select(1, h.target_class));
  }
  at::Tensor all = torch::cat(probs).to(torch::kCPU, torch::kFloat64);
  h.probs = options.grid_only ? all.view({1, grid.count()}) : all.view({grid.rows(), grid.cols()});
  h.boxes = grid.boxes();

  at::Tensor sum = torch::zeros({config.image_h, config.image_w}, torch::kFloat64);
  at::Tensor count = torch::zeros_like(sum);
  const double* p = all.data_ptr<double>();
  for (size_t i = 0; i < h.boxes.size(); ++i) {
    const PatchBox& b = h.boxes[i];
    sum.narrow(0, b.y, b.h).narrow(1, b.x, b.w).add_(p[i]);
    count.narrow(0, b.y, b.h).narrow(1, b.x, b.w).add_(1.0);
  }
  h.coverage = sum / count;  // 0 / 0 = NaN where no patch reaches
  if (was_training) model->train();
  return h;
}

Heatmap tile_heatmap(
    const std::vector<Box>& boxes, const std::vector<double>& scores, int64_t width, int64_t height,
    int64_t thumb_h, int64_t thumb_w) {
  check_input(
      boxes.size() == scores.size() && !boxes.empty() && width > 0 && height > 0 && thumb_h > 0 &&
          thumb_w > 0,
      "tile heatmap: {} boxes, {} scores, image {}x{}, thumbnail {}x{}",
      boxes.size(),
      scores.size(),
      width,
      height,
      thumb_w,
      thumb_h);
  Heatmap h;
  h.probs = torch::tensor(scores, torch::kFloat64).view({1, -1});
  const double top = std::max(h.probs.max().item<double>(), 1e-30);
  at::Tensor sum = torch::zeros({thumb_h, thumb_w}, torch::kFloat64);
  at::Tensor count = torch::zeros_like(sum);
  const double sx = static_cast<double>(thumb_w) / width;
  const double sy = static_cast<double>(thumb_h) / height;
  for (size_t i = 0; i < boxes.size(); ++i) {
    const Box& b = boxes[i];
    const int64_t x0 = std::clamp<int64_t>(std::llround(b.x * sx), 0, thumb_w - 1);
    const int64_t y0 = std::clamp<int64_t>(std::llround(b.y * sy), 0, thumb_h - 1);
    const int64_t x1 = std::clamp<int64_t>(std::llround((b.x + b.w) * sx), x0 + 1, thumb_w);
    const int64_t y1 = std::clamp<int64_t>(std::llround((b.y + b.h) * sy), y0 + 1, thumb_h);
    sum.narrow(0, y0, y1 - y0).narrow(1, x0, x1 - x0).add_(scores[i] / top);
    count.narrow(0, y0, y1 - y0).narrow(1, x0, x1 - x0).add_(1.0);
    h.boxes.push_back({y0, x0, y1 - y0, x1 - x0, false});
  }
  h.coverage = sum / count;
  return h;
}

at::Tensor render_crop_strip(
    const std::vector<at::Tensor>& crops, const std::vector<double>& scores) {
  constexpr int kGap = 8;
  constexpr int kLabel = 16;
  const int side = crops.empty() ? 1 : static_cast<int>(crops.front().size(1));
  const int n = static_cast<int>(crops.size());
  cv::Mat strip(side + kLabel, std::max(1, n * (side + kGap)), CV_8UC3, cv::Scalar(255, 255, 255));
  for (int i = 0; i < n; ++i) {
    at::Tensor c = crops[static_cast<size_t>(i)];
    if (c.size(0) == 1) c = c.expand({3, c.size(1), c.size(2)});
    at::Tensor hwc = c.permute({1, 2, 0}).contiguous();
    cv::Mat rgb(side, side, CV_8UC3, hwc.data_ptr<uint8_t>());
    cv::Mat bgr;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    bgr.copyTo(strip(cv::Rect(i * (side + kGap), 0, side, side)));
    cv::putText(
        strip,
        fmt::format("{:.3f}", scores[static_cast<size_t>(i)]),
        cv::Point(i * (side + kGap) + 2, side + 12),
        cv::FONT_HERSHEY_SIMPLEX,
        0.4,
        cv::Scalar(0, 0, 0),
        1,
        cv::LINE_AA);
  }
  cv::Mat rgb;
  cv::cvtColor(strip, rgb, cv::COLOR_BGR2RGB);
  at::Tensor out = torch::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, torch::kUInt8);
  return out.permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);
}

at::Tensor render_heatmap(
    const at::Tensor& image, const Heatmap& heatmap, const std::string& title, int64_t scale) {
  const int H = static_cast<int>(image.size(1));
  const int W = static_cast<int>(image.size(2));
  const int s = static_cast<int>(scale);
  // Grayscale image, enlarged.
  at::Tensor gray = image.to(torch::kFloat32).mean(0).round().to(torch::kUInt8).contiguous();
  cv::Mat base(H, W, CV_8UC1, gray.data_ptr<uint8_t>());
  cv::Mat base_big, base_bgr;
  cv::resize(base, base_big, cv::Size(W * s, H * s), 0, 0, cv::INTER_NEAREST);
  cv::cvtColor(base_big, base_bgr, cv::COLOR_GRAY2BGR);
  // Coverage in 0..255, NaN (no patch) left uncoloured.
  at::Tensor cov = heatmap.coverage.to(torch::kFloat64).contiguous();
  at::Tensor valid = cov.isnan().logical_not().to(torch::kUInt8).mul(255).contiguous();
  at::Tensor level =
      cov.nan_to_num(0.0).clamp(0, 1).mul(255).round().to(torch::kUInt8).contiguous();
  cv::Mat level_mat(H, W, CV_8UC1, level.data_ptr<uint8_t>());
  cv::Mat valid_mat(H, W, CV_8UC1, valid.data_ptr<uint8_t>());
  cv::Mat level_big, valid_big, colour;
  cv::resize(level_mat, level_big, cv::Size(W * s, H * s), 0, 0, cv::INTER_NEAREST);
  cv::resize(valid_mat, valid_big, cv::Size(W * s, H * s), 0, 0, cv::INTER_NEAREST);
  cv::applyColorMap(level_big, colour, cv::COLORMAP_VIRIDIS);
  cv::Mat blended;
  cv::addWeighted(colour, kOverlayAlpha, base_bgr, 1.0 - kOverlayAlpha, 0.0, blended);
  base_bgr.copyTo(blended, valid_big == 0);

  // Canvas: title on top, the map, a colour bar with 0 and 1 on the right.
  const int bar_left = W * s + 8;
  cv::Mat canvas(
      H * s + kTitleHeight, bar_left + kBarWidth + 30, CV_8UC3, cv::Scalar(255, 255, 255));
  blended.copyTo(canvas(cv::Rect(0, kTitleHeight, W * s, H * s)));
  cv::Mat ramp(H * s, 1, CV_8UC1);
  for (int y = 0; y < H * s; ++y)
    ramp.at<uint8_t>(y, 0) = static_cast<uint8_t>(255 - 255 * y / std::max(1, H * s - 1));
  cv::Mat ramp_colour;
  cv::applyColorMap(ramp, ramp_colour, cv::COLORMAP_VIRIDIS);
  cv::resize(ramp_colour, ramp_colour, cv::Size(kBarWidth, H * s), 0, 0, cv::INTER_NEAREST);
  ramp_colour.copyTo(canvas(cv::Rect(bar_left, kTitleHeight, kBarWidth, H * s)));
  const cv::Scalar ink(0, 0, 0);
  cv::putText(
      canvas,
      "1",
      cv::Point(bar_left + kBarWidth + 4, kTitleHeight + 12),
      cv::FONT_HERSHEY_SIMPLEX,
      0.4,
      ink,
      1,
      cv::LINE_AA);
  cv::putText(
      canvas,
      "0",
      cv::Point(bar_left + kBarWidth + 4, kTitleHeight + H * s),
      cv::FONT_HERSHEY_SIMPLEX,
      0.4,
      ink,
      1,
      cv::LINE_AA);
  cv::putText(canvas, title, cv::Point(4, 15), cv::FONT_HERSHEY_SIMPLEX, 0.45, ink, 1, cv::LINE_AA);
  cv::Mat rgb;
  cv::cvtColor(canvas, rgb, cv::COLOR_BGR2RGB);
  at::Tensor out = torch::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, torch::kUInt8);
  return out.permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);
}

namespace {

/// `top` over `bottom`, both uint8 [3,h,w], the narrower padded white on the right.
at::Tensor stack_vertically(const at::Tensor& top, const at::Tensor& bottom) {
  const int64_t width = std::max(top.size(2), bottom.size(2));
  auto pad = [&](const at::Tensor& t) {
    return torch::constant_pad_nd(t, {0, width - t.size(2)}, 255);
  };
  return torch::cat({pad(top), pad(bottom)}, 1).contiguous();
}

/// The `top` best tiles of `bag` (by `scores`) read at its level as crops of 128, with
/// their boxes and scores.
std::vector<at::Tensor> top_crops(
    const RegionReader& reader, const Bag& bag, const std::vector<double>& scores, int64_t top,
    std::vector<double>& crop_scores, nlohmann::json& tiles) {
  std::vector<at::Tensor> crops;
  const double downsample = reader.levels()[static_cast<size_t>(bag.level)].downsample;
  for (int64_t t : top_tiles(scores, top)) {
    const Box& b = bag.boxes[static_cast<size_t>(t)];
    const Box at_level{
        std::llround(b.x / downsample),
        std::llround(b.y / downsample),
        std::llround(b.w / downsample),
        std::llround(b.h / downsample)};
    crops.push_back(reader.read_resized(at_level, bag.level, 128));
    crop_scores.push_back(scores[static_cast<size_t>(t)]);
    tiles.push_back(
        {{"x", b.x}, {"y", b.y}, {"w", b.w}, {"h", b.h}, {"score", crop_scores.back()}});
  }
  return crops;
}

}  // namespace

TiledHeatmap draw_tiled_heatmap(
    PatchClassifier& model, const std::string& image, int64_t target_class, int64_t size,
    int64_t top) {
  const ModelConfig& config = model->config();
  const BagOptions options = model_bag_options(config);
  std::unique_ptr<RegionReader> reader = open_region_reader(image, options.reader);
  const Bag bag = read_bag(*reader, options);
  const BagPrediction p = predict_bag(model, bag.tiles, target_class);
  const at::Tensor thumb = reader->thumbnail(size);
  const Heatmap h = tile_heatmap(
      bag.boxes, p.scores, reader->width(), reader->height(), thumb.size(1), thumb.size(2));
  const std::string label = config.class_names[static_cast<size_t>(p.winner)];
  const std::string title = fmt::format(
      "{} / max over {} tiles; predicted {} ({:.3f})",
      p.score_name,
      bag.tiles.size(0),
      label,
      p.probabilities[static_cast<size_t>(p.winner)]);
  std::vector<double> crop_scores;
  nlohmann::json tiles = nlohmann::json::array();
  const std::vector<at::Tensor> crops = top_crops(*reader, bag, p.scores, top, crop_scores, tiles);
  TiledHeatmap out;
  out.picture =
      stack_vertically(render_heatmap(thumb, h, title, 1), render_crop_strip(crops, crop_scores));
  out.summary = {
      {"class", p.winner},
      {"label", label},
      {"score", p.score_name},
      {"tiles", bag.tiles.size(0)},
      {"top_tiles", tiles}};
  out.low = *std::min_element(p.scores.begin(), p.scores.end());
  out.high = *std::max_element(p.scores.begin(), p.scores.end());
  return out;
}

}  // namespace patchwise
