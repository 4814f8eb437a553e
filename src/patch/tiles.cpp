#include "patchwise/patch/tiles.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <opencv2/imgproc.hpp>

#include "patchwise/base/error.h"

namespace patchwise {
namespace {

/// uint8 [C,h,w] as the 8-bit channel the mask is thresholded on.
cv::Mat mask_channel(const at::Tensor& thumb, std::string& channel) {
  const int h = static_cast<int>(thumb.size(1)), w = static_cast<int>(thumb.size(2));
  at::Tensor hwc = thumb.permute({1, 2, 0}).contiguous();
  cv::Mat pixels(h, w, CV_8UC(static_cast<int>(thumb.size(0))), hwc.data_ptr<uint8_t>());
  if (thumb.size(0) == 3) {
    cv::Mat hsv;
    cv::cvtColor(pixels, hsv, cv::COLOR_RGB2HSV);
    cv::Mat planes[3];
    cv::split(hsv, planes);
    double lo = 0, hi = 0;
    cv::minMaxLoc(planes[1], &lo, &hi);
    if (hi - lo >= 16) {
      channel = "saturation";
      return planes[1];
    }
    cv::Mat grey;
    cv::cvtColor(pixels, grey, cv::COLOR_RGB2GRAY);
    channel = "intensity";
    return grey;
  }
  channel = "intensity";
  return pixels.clone();
}

/// Whether most pixels of `binary`'s border are set.
bool border_mostly_set(const cv::Mat& binary) {
  int64_t set = 0, total = 0;
  for (int x = 0; x < binary.cols; ++x) {
    set += (binary.at<uint8_t>(0, x) != 0) + (binary.at<uint8_t>(binary.rows - 1, x) != 0);
    total += 2;
  }
  for (int y = 1; y + 1 < binary.rows; ++y) {
    set += (binary.at<uint8_t>(y, 0) != 0) + (binary.at<uint8_t>(y, binary.cols - 1) != 0);
    total += 2;
  }
  return 2 * set > total;
}

}  // namespace

std::vector<int64_t> tile_offsets(int64_t size, int64_t tile, int64_t stride) {
  std::vector<int64_t> out;
  for (int64_t o = 0; o + tile <= size; o += stride) out.push_back(o);
  return out;
}

std::vector<Box> tile_lattice(int64_t width, int64_t height, int64_t tile, int64_t stride) {
  check_input(tile > 0, "tile {}, expected a positive number of pixels", tile);
  check_input(stride > 0, "tile stride {}, expected a positive number of pixels", stride);
  check_input(
      tile <= width && tile <= height,
      "tile {}, expected at most the image's {}x{} at the chosen level",
      tile,
      width,
      height);
  std::vector<Box> boxes;
  const auto xs = tile_offsets(width, tile, stride);
  for (int64_t y : tile_offsets(height, tile, stride)) {
    for (int64_t x : xs) boxes.push_back({x, y, tile, tile});
  }
  return boxes;
}

int choose_level(const RegionReader& reader, const TileOptions& options) {
  const int levels = static_cast<int>(reader.levels().size());
  if (options.level >= 0) {
    check_input(
        options.level < levels,
        "{}: level {}, expected 0..{} (the image has {} level{})",
        reader.path(),
        options.level,
        levels - 1,
        levels,
        levels == 1 ? "" : "s");
    return options.level;
  }
  if (options.mpp <= 0) return 0;
  check_input(
      !std::isnan(reader.mpp()),
      "{}: mpp {} asked, but the file states no microns per pixel; use --level",
      reader.path(),
      options.mpp);
  int best = 0;
  for (int i = 1; i < levels; ++i) {
    const double here = reader.mpp() * reader.levels()[static_cast<size_t>(i)].downsample;
    const double there = reader.mpp() * reader.levels()[static_cast<size_t>(best)].downsample;
    if (std::abs(std::log(here / options.mpp)) < std::abs(std::log(there / options.mpp))) best = i;
  }
  return best;
}

int64_t mask_side(const RegionReader& reader, int64_t tile, double downsample) {
  const double tiles_across =
      static_cast<double>(std::max(reader.width(), reader.height())) / (tile * downsample);
  return std::clamp<int64_t>(std::llround(8 * tiles_across), 256, 4096);
}

void check_tile_options(const TileOptions& o) {
  check_option(o.tile >= 1, "tile", "{}, expected a positive number of pixels", o.tile);
  check_option(o.stride >= 0, "tile_stride", "{}, expected >= 0", o.stride);
  check_option(o.mpp >= 0, "mpp", "{}, expected >= 0", o.mpp);
  check_option(
      o.min_foreground >= 0 && o.min_foreground <= 1,
      "min_foreground",
      "{}, expected a fraction in [0, 1]",
      o.min_foreground);
  check_option(
      o.mask_side == 0 || (o.mask_side >= 16 && o.mask_side <= 16384),
      "mask_side",
      "{}, expected 0 (automatic) or 16..16384",
      o.mask_side);
}

ForegroundMask foreground_mask(const RegionReader& reader, int64_t max_side, bool cleanup) {
  ForegroundMask out;
  out.thumbnail = reader.thumbnail(max_side);
  cv::Mat values = mask_channel(out.thumbnail, out.channel);
  cv::Mat binary;
  out.threshold =
      static_cast<int>(cv::threshold(values, binary, 0, 1, cv::THRESH_BINARY | cv::THRESH_OTSU));
  out.foreground_high = out.channel == "saturation" || !border_mostly_set(binary);
  if (!out.foreground_high) binary = 1 - binary;
  if (cleanup) {
    const cv::Mat kernel = cv::getStructuringElement(cv::MORPH_ELLIPSE, cv::Size(3, 3));
    cv::morphologyEx(binary, binary, cv::MORPH_CLOSE, kernel);
    cv::morphologyEx(binary, binary, cv::MORPH_OPEN, kernel);
  }
  out.mask = torch::from_blob(binary.data, {binary.rows, binary.cols}, torch::kUInt8).clone();
  return out;
}

Box level0_box(const Box& b, double ds) {
  return {
      std::llround(b.x * ds),
      std::llround(b.y * ds),
      std::llround(b.w * ds),
      std::llround(b.h * ds)};
}

TilePlan plan_tiles(const RegionReader& reader, const TileOptions& options) {
  check_tile_options(options);
  TilePlan plan;
  plan.level = choose_level(reader, options);
  const PyramidLevel& level = reader.levels()[static_cast<size_t>(plan.level)];
  plan.downsample = level.downsample;
  plan.tile = options.tile;
  plan.stride = options.stride > 0 ? options.stride : options.tile;
  check_input(
      options.tile > 0 && options.tile <= level.width && options.tile <= level.height,
      "{}: tile {}, expected 1..{} (level {} is {}x{})",
      reader.path(),
      options.tile,
      std::min(level.width, level.height),
      plan.level,
      level.width,
      level.height);
  plan.boxes = tile_lattice(level.width, level.height, plan.tile, plan.stride);
  plan.foreground.assign(plan.boxes.size(), 1.0f);
  if (options.min_foreground > 0) {
    const int64_t side =
        options.mask_side > 0 ? options.mask_side : mask_side(reader, plan.tile, plan.downsample);
    plan.mask = foreground_mask(reader, side, options.cleanup);
    // Integral image of the mask: each tile's fraction in O(1).
    cv::Mat mask(
        static_cast<int>(plan.mask.mask.size(0)),
        static_cast<int>(plan.mask.mask.size(1)),
        CV_8U,
        plan.mask.mask.data_ptr<uint8_t>());
    cv::Mat sums;
    cv::integral(mask, sums, CV_64F);
    const double sx = mask.cols / static_cast<double>(reader.width());
    const double sy = mask.rows / static_cast<double>(reader.height());
    for (size_t i = 0; i < plan.boxes.size(); ++i) {
      const Box b = level0_box(plan.boxes[i], plan.downsample);
      const int x0 = std::clamp(static_cast<int>(std::floor(b.x * sx)), 0, mask.cols - 1);
      const int y0 = std::clamp(static_cast<int>(std::floor(b.y * sy)), 0, mask.rows - 1);
      const int x1 = std::clamp(static_cast<int>(std::ceil((b.x + b.w) * sx)), x0 + 1, mask.cols);
      const int y1 = std::clamp(static_cast<int>(std::ceil((b.y + b.h) * sy)), y0 + 1, mask.rows);
      const double set = sums.at<double>(y1, x1) - sums.at<double>(y0, x1) -
                         sums.at<double>(y1, x0) + sums.at<double>(y0, x0);
      plan.foreground[i] = static_cast<float>(set / ((x1 - x0) * (y1 - y0)));
    }
  }
  for (size_t i = 0; i < plan.boxes.size(); ++i) {
    if (plan.foreground[i] >= options.min_foreground) plan.kept.push_back(static_cast<int64_t>(i));
  }
  if (plan.kept.empty()) {
    for (size_t i = 0; i < plan.boxes.size(); ++i) {
      if (plan.foreground[i] > 0) plan.kept.push_back(static_cast<int64_t>(i));
    }
    plan.sparse = !plan.kept.empty();
  }
  if (plan.kept.empty()) {
    plan.fallback = true;
    for (size_t i = 0; i < plan.boxes.size(); ++i) plan.kept.push_back(static_cast<int64_t>(i));
  }
  return plan;
}

}  // namespace patchwise
