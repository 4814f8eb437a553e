#include "patchwise/report/tile_sheet.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <opencv2/imgproc.hpp>

namespace patchwise {
namespace {

/// uint8 [C,h,w] as an RGB cv::Mat (a copy).
cv::Mat to_rgb_mat(const at::Tensor& image) {
  at::Tensor rgb = image.size(0) == 1 ? image.expand({3, -1, -1}) : image;
  at::Tensor hwc = rgb.permute({1, 2, 0}).contiguous();
  return cv::Mat(
             static_cast<int>(hwc.size(0)),
             static_cast<int>(hwc.size(1)),
             CV_8UC3,
             hwc.data_ptr<uint8_t>())
      .clone();
}

/// Tints the pixels where `mask` (uint8 [h,w], any size) is set.
void shade_mask(cv::Mat& canvas, const at::Tensor& mask) {
  if (!mask.defined()) return;
  cv::Mat m(
      static_cast<int>(mask.size(0)),
      static_cast<int>(mask.size(1)),
      CV_8U,
      mask.contiguous().data_ptr<uint8_t>());
  cv::Mat scaled;
  cv::resize(m, scaled, canvas.size(), 0, 0, cv::INTER_NEAREST);
  cv::Mat tint(canvas.size(), CV_8UC3, cv::Scalar(40, 90, 255));
  cv::Mat blended;
  cv::addWeighted(canvas, 0.75, tint, 0.25, 0, blended);
  blended.copyTo(canvas, scaled);
}

}  // namespace

at::Tensor render_tile_sheet(
    const at::Tensor& thumbnail, const TilePlan& plan, int64_t width, int64_t height) {
  cv::Mat canvas = to_rgb_mat(thumbnail);
  shade_mask(canvas, plan.mask.mask);
  const double sx = canvas.cols / static_cast<double>(width);
  const double sy = canvas.rows / static_cast<double>(height);
  std::vector<bool> kept(plan.boxes.size(), false);
  for (int64_t i : plan.kept) kept[static_cast<size_t>(i)] = true;
  // Outlines while a tile is at least 16 pixels wide in the picture; below that they
  // would hide the image, and the tiles are filled translucently instead.
  const bool outline = plan.tile * plan.downsample * sx >= 16;
  cv::Mat kept_fill = canvas.clone(), rejected_fill = canvas.clone();
  for (size_t i = 0; i < plan.boxes.size(); ++i) {
    const Box b = level0_box(plan.boxes[i], plan.downsample);
    // Corners rounded, not sizes: neighbouring tiles meet without gaps.
    const int x0 = static_cast<int>(std::lround(b.x * sx));
    const int y0 = static_cast<int>(std::lround(b.y * sy));
    const cv::Rect r(
        x0,
        y0,
        std::max(1, static_cast<int>(std::lround((b.x + b.w) * sx)) - x0),
        std::max(1, static_cast<int>(std::lround((b.y + b.h) * sy)) - y0));
    const cv::Scalar colour = kept[i] ? cv::Scalar(0, 170, 0) : cv::Scalar(220, 0, 0);
    if (outline) {
      cv::rectangle(canvas, r, colour, 1);
    } else {
      cv::rectangle(kept[i] ? kept_fill : rejected_fill, r, colour, cv::FILLED);
    }
  }
  if (!outline) {
    cv::addWeighted(canvas, 0.7, kept_fill, 0.3, 0, kept_fill);
    cv::addWeighted(kept_fill, 0.75, rejected_fill, 0.25, 0, canvas);
  }
  // Legend strip below the picture.
  const int legend = 22;
  cv::Mat sheet(
      canvas.rows + legend, std::max(canvas.cols, 520), CV_8UC3, cv::Scalar(255, 255, 255));
  canvas.copyTo(sheet(cv::Rect(0, 0, canvas.cols, canvas.rows)));
  const std::string text = fmt::format(
      "{} of {} tiles kept (green){}; rejected: red; foreground mask: blue",
      plan.kept.size(),
      plan.boxes.size(),
      plan.fallback ? ", none had foreground"
      : plan.sparse ? ", sparse: any foreground"
                    : "");
  cv::putText(
      sheet,
      text,
      cv::Point(4, canvas.rows + 16),
      cv::FONT_HERSHEY_SIMPLEX,
      0.45,
      cv::Scalar(0, 0, 0),
      1,
      cv::LINE_AA);
  at::Tensor hwc = torch::from_blob(sheet.data, {sheet.rows, sheet.cols, 3}, torch::kUInt8);
  return hwc.permute({2, 0, 1}).contiguous();
}

nlohmann::json describe_region_image(const RegionReader& r) {
  nlohmann::json levels = nlohmann::json::array();
  for (const PyramidLevel& l : r.levels()) {
    levels.push_back({{"width", l.width}, {"height", l.height}, {"downsample", l.downsample}});
  }
  return {
      {"image", r.path()},
      {"format", r.format()},
      {"width", r.width()},
      {"height", r.height()},
      {"channels", r.channels()},
      {"levels", levels},
      {"mpp", std::isnan(r.mpp()) ? nlohmann::json() : nlohmann::json(r.mpp())}};
}

nlohmann::json describe_tile_plan(const TilePlan& plan, double min_foreground, bool with_boxes) {
  nlohmann::json boxes = nlohmann::json::array();
  std::vector<bool> kept(plan.boxes.size(), false);
  for (int64_t i : plan.kept) kept[static_cast<size_t>(i)] = true;
  for (size_t i = 0; with_boxes && i < plan.boxes.size(); ++i) {
    const Box& b = plan.boxes[i];
    boxes.push_back(
        {{"x", b.x},
         {"y", b.y},
         {"w", b.w},
         {"h", b.h},
         {"foreground", plan.foreground[i]},
         {"kept", static_cast<bool>(kept[i])}});
  }
  nlohmann::json j = {
      {"level", plan.level},
      {"downsample", plan.downsample},
      {"tile", plan.tile},
      {"stride", plan.stride},
      {"min_foreground", min_foreground},
      {"tiles", plan.boxes.size()},
      {"kept", plan.kept.size()},
      {"sparse", plan.sparse},
      {"fallback", plan.fallback},
      {"boxes", boxes}};
  if (plan.mask.mask.defined()) {
    j["mask"] = {
        {"channel", plan.mask.channel},
        {"threshold", plan.mask.threshold},
        {"foreground", plan.mask.foreground_high ? "above" : "at or below"},
        {"width", plan.mask.mask.size(1)},
        {"height", plan.mask.mask.size(0)}};
  }
  return j;
}

}  // namespace patchwise
