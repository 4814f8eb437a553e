#include "patchwise/report/patch_sheet.h"

#include <torch/torch.h>

#include <opencv2/imgproc.hpp>

namespace patchwise {
namespace {

const cv::Scalar kBackground(255, 255, 255);
const cv::Scalar kBorder(96, 96, 96);
const cv::Scalar kOutline(0, 160, 255);

/// uint8 [C,H,W] -> 8-bit 3-channel cv::Mat (RGB order kept; only drawn, never saved by OpenCV).
cv::Mat to_rgb_mat(const at::Tensor& image) {
  at::Tensor rgb = image.size(0) == 1 ? image.expand({3, image.size(1), image.size(2)}) : image;
  at::Tensor hwc = rgb.permute({1, 2, 0}).contiguous();
  return cv::Mat(
             static_cast<int>(hwc.size(0)),
             static_cast<int>(hwc.size(1)),
             CV_8UC3,
             hwc.data_ptr<uint8_t>())
      .clone();
}

}  // namespace

at::Tensor render_patch_sheet(
    const at::Tensor& image, const PatchGrid& grid, const PatchSheetOptions& options) {
  TORCH_CHECK(image.dim() == 3 && image.scalar_type() == torch::kUInt8, "expected uint8 [C,H,W]");
  const int cell = static_cast<int>(options.cell);
  const int gap = static_cast<int>(options.border);
  const int rows = static_cast<int>(grid.rows());
  const int cols = static_cast<int>(grid.cols());

  // The patches exactly as the model sees them: cut + resize, in float, back to bytes.
  at::Tensor patches = grid.cut(image.unsqueeze(0).to(torch::kFloat32))[0].round().clamp(0, 255).to(
      torch::kUInt8);  // [P,C,I,I]

  const int grid_w = cols * cell + (cols + 1) * gap;
  const int grid_h = rows * cell + (rows + 1) * gap;
  // The image panel is as tall as the patch panel, scaled by a whole factor when possible.
  const double scale = static_cast<double>(grid_h - 2 * gap) /
                       static_cast<double>(std::max(grid.image_h(), grid.image_w()));
  const int image_w = static_cast<int>(grid.image_w() * scale);
  const int image_h = static_cast<int>(grid.image_h() * scale);
  cv::Mat sheet(
      std::max(grid_h, image_h + 2 * gap), image_w + 2 * gap + grid_w + gap, CV_8UC3, kBackground);

  cv::Mat big;
  cv::resize(to_rgb_mat(image), big, cv::Size(image_w, image_h), 0, 0, cv::INTER_NEAREST);
  big.copyTo(sheet(cv::Rect(gap, gap, image_w, image_h)));
  for (const PatchBox& box : grid.boxes()) {
    if (box.flip) continue;  // a mirrored patch covers the same pixels as its original
    cv::Rect r(
        gap + static_cast<int>(box.x * scale),
        gap + static_cast<int>(box.y * scale),
        static_cast<int>(box.w * scale),
        static_cast<int>(box.h * scale));
    cv::rectangle(sheet, r, kOutline, 1);
  }

  const int left = image_w + 3 * gap;
  cv::rectangle(sheet, cv::Rect(left, 0, grid_w, grid_h), kBorder, cv::FILLED);
  for (int i = 0; i < static_cast<int>(grid.count()); ++i) {
    const int r = i / cols;
    const int c = i % cols;
    cv::Mat tile;
    cv::resize(to_rgb_mat(patches[i]), tile, cv::Size(cell, cell), 0, 0, cv::INTER_NEAREST);
    tile.copyTo(sheet(cv::Rect(left + gap + c * (cell + gap), gap + r * (cell + gap), cell, cell)));
  }
  at::Tensor out = torch::from_blob(sheet.data, {sheet.rows, sheet.cols, 3}, torch::kUInt8);
  return out.permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);  // the Mat owns the bytes
}

}  // namespace patchwise
