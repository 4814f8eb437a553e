#include "patchwise/patch/grid.h"

#include <torch/torch.h>

#include "patchwise/base/error.h"

namespace patchwise {
namespace {

struct AxisPlan {
  int64_t count = 0;
  int64_t stride = 0;
  std::vector<int64_t> offsets;
};

/// Offsets along one axis of `extent` pixels for `count` patches of `patch` pixels.
AxisPlan plan_axis(int64_t extent, int64_t patch, int64_t count, int64_t stride, const char* axis) {
  check_option(patch > 0, "patch", "{} {}, expected a positive size", axis, patch);
  check_option(
      patch <= extent,
      "patch",
      "patch {} {} is larger than the image's {} {}",
      axis,
      patch,
      axis,
      extent);
  AxisPlan plan;
  if (stride > 0) {
    int64_t fits = (extent - patch) / stride + 1;
    check_option(
        count == 0 || count == fits,
        "grid",
        "{} patches along the {}, but stride {} with patch {} on {} pixels fits {} "
        "(TensorFlow VALID rule)",
        count,
        axis,
        stride,
        patch,
        extent,
        fits);
    plan.count = fits;
    plan.stride = stride;
    for (int64_t i = 0; i < fits; ++i) plan.offsets.push_back(i * stride);
    return plan;
  }
  check_option(count > 0, "grid", "{} patches along the {}, expected at least 1", count, axis);
  plan.count = count;
  if (count == 1) {
    plan.offsets.push_back((extent - patch) / 2);
    plan.stride = 0;
    return plan;
  }
  check_option(
      (extent - patch) % (count - 1) == 0,
      "grid",
      "{} patches of {} flush with both borders of {} pixels need stride "
      "({} - {}) / {}, which is not an integer; choose another patch or a stride",
      count,
      patch,
      extent,
      extent,
      patch,
      count - 1);
  plan.stride = (extent - patch) / (count - 1);
  check_option(
      plan.stride > 0,
      "grid",
      "{} patches of {} on {} pixels all coincide (stride 0)",
      count,
      patch,
      extent);
  for (int64_t i = 0; i < count; ++i) plan.offsets.push_back(i * plan.stride);
  return plan;
}

}  // namespace

PatchLayout parse_patch_layout(const std::string& name) {
  if (name == "grid") return PatchLayout::kGrid;
  if (name == "five-crop") return PatchLayout::kFiveCrop;
  if (name == "ten-crop") return PatchLayout::kTenCrop;
  throw OptionError(
      "layout", fmt::format("unknown layout '{}', expected grid, five-crop or ten-crop", name));
}

std::string patch_layout_name(PatchLayout layout) {
  switch (layout) {
    case PatchLayout::kGrid:
      return "grid";
    case PatchLayout::kFiveCrop:
      return "five-crop";
    case PatchLayout::kTenCrop:
      return "ten-crop";
  }
  return "grid";
}

PatchGrid::PatchGrid(const PatchGridOptions& options, int64_t image_h, int64_t image_w)
    : options_(options), image_h_(image_h), image_w_(image_w) {
  check_option(options.input > 0, "input", "{}, expected a positive size", options.input);
  check_input(image_h > 0 && image_w > 0, "image size {}x{}, expected positive", image_h, image_w);
  const int64_t ph = options.patch_h;
  const int64_t pw = options.patch_w;
  if (options.layout == PatchLayout::kGrid) {
    AxisPlan r = plan_axis(image_h, ph, options.rows, options.stride_h, "height");
    AxisPlan c = plan_axis(image_w, pw, options.cols, options.stride_w, "width");
    rows_ = r.count;
    cols_ = c.count;
    stride_h_ = r.stride;
    stride_w_ = c.stride;
    for (int64_t y : r.offsets)
      for (int64_t x : c.offsets) boxes_.push_back({y, x, ph, pw, false});
    return;
  }
  check_option(ph > 0 && pw > 0, "patch", "{}x{}, expected a positive size", ph, pw);
  check_option(
      ph <= image_h && pw <= image_w,
      "patch",
      "{}x{} is larger than the {}x{} image",
      ph,
      pw,
      image_h,
      image_w);
  const int64_t bottom = image_h - ph;
  const int64_t right = image_w - pw;
  boxes_ = {
      {0, 0, ph, pw, false},
      {0, right, ph, pw, false},
      {bottom, 0, ph, pw, false},
      {bottom, right, ph, pw, false},
      {bottom / 2, right / 2, ph, pw, false}};
  if (options.layout == PatchLayout::kTenCrop) {
    for (int i = 0; i < 5; ++i) {
      PatchBox mirrored = boxes_[i];
      mirrored.flip = true;
      boxes_.push_back(mirrored);
    }
  }
  rows_ = 1;
  cols_ = count();
}

at::Tensor PatchGrid::cut(const at::Tensor& images) const {
  TORCH_CHECK(images.dim() == 4, "PatchGrid::cut expects [B,C,H,W], got ", images.sizes());
  check_input(
      images.size(2) == image_h_ && images.size(3) == image_w_,
      "image size {}x{}, but the patch grid was built for {}x{}",
      images.size(2),
      images.size(3),
      image_h_,
      image_w_);
  const int64_t batch = images.size(0);
  const int64_t channels = images.size(1);
  std::vector<at::Tensor> patches;
  patches.reserve(boxes_.size());
  for (const PatchBox& box : boxes_) {
    at::Tensor patch = images.narrow(2, box.y, box.h).narrow(3, box.x, box.w);
    if (box.flip) patch = patch.flip({3});
    patches.push_back(patch);
  }
  // Every box has the same size: one stack, then one resize for the whole batch.
  at::Tensor stacked = torch::stack(patches, 1);  // [B,P,C,h,w]
  const int64_t ph = options_.patch_h;
  const int64_t pw = options_.patch_w;
  const int64_t in = options_.input;
  if (ph == in && pw == in) return stacked;
  at::Tensor flat = stacked.view({batch * count(), channels, ph, pw});
  at::Tensor resized = torch::nn::functional::interpolate(
      flat,
      torch::nn::functional::InterpolateFuncOptions()
          .size(std::vector<int64_t>{in, in})
          .mode(torch::kBilinear)
          .align_corners(false));
  return resized.view({batch, count(), channels, in, in});
}

std::string PatchGrid::describe() const {
  const int64_t ph = options_.patch_h;
  const int64_t pw = options_.patch_w;
  if (options_.layout != PatchLayout::kGrid) {
    return fmt::format(
        "{} of {}x{} patches, resized to {}x{}",
        patch_layout_name(options_.layout),
        ph,
        pw,
        options_.input,
        options_.input);
  }
  return fmt::format(
      "{}x{} grid of {}x{} patches, stride {}x{}, resized to {}x{}",
      rows_,
      cols_,
      ph,
      pw,
      stride_h_,
      stride_w_,
      options_.input,
      options_.input);
}

}  // namespace patchwise
