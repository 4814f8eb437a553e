#pragma once
// PatchGrid: cuts each image of a batch into P patches and resizes them to the
// backbone's input size.
//
//   in : float [B,C,H,W]
//   out: float [B,P,C,I,I]   (P = number of boxes, I = input size)
//
// Grid arithmetic, per axis (rows shown; columns are the same with W):
//   no stride given : S = (H - P) / (R - 1), which must be an integer, so that the
//                     outer patches sit flush with the image borders
//                     (seed case: H=28, P=18, R=2 -> S=10, offsets 0 and 10);
//                     with R = 1 the single patch is centred: offset (H - P) / 2.
//   stride S given  : TensorFlow's extract_patches VALID rule,
//                     R = (H - P) / S + 1 (floor), offsets 0, S, 2S, ...
// Patches are taken in row-major order: (0,0), (0,1), ..., (1,0), ...
// five-crop: the four corners (TL, TR, BL, BR) then the centre; ten-crop: those
// five followed by their horizontal flips.
// Resizing is bilinear with align_corners=false and is skipped when a patch
// already has the input size. Pure tensor code: runs on CPU or GPU.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace patchwise {

enum class PatchLayout { kGrid, kFiveCrop, kTenCrop };

/// "grid", "five-crop", "ten-crop"; throws InputError on anything else.
PatchLayout parse_patch_layout(const std::string& name);
std::string patch_layout_name(PatchLayout layout);

struct PatchGridOptions {
  PatchLayout layout = PatchLayout::kGrid;  ///< how the patches are placed
  int64_t rows = 2;                         ///< grid rows; 0: as many as the stride fits
  int64_t cols = 2;                         ///< grid columns; 0: as many as the stride fits
  int64_t patch_h = 18;                     ///< patch height in image pixels
  int64_t patch_w = 18;                     ///< patch width in image pixels
  int64_t stride_h = 0;                     ///< 0: flush with the borders (see above)
  int64_t stride_w = 0;                     ///< 0: flush with the borders (see above)
  int64_t input = 32;                       ///< side of the square backbone input
};

/// One patch: its top-left corner and size in image pixels, and whether it is mirrored.
struct PatchBox {
  int64_t y = 0;
  int64_t x = 0;
  int64_t h = 0;
  int64_t w = 0;
  bool flip = false;
};

class PatchGrid {
 public:
  /// Resolves the boxes for images of `image_h` x `image_w`; throws InputError
  /// when the patch does not fit or a flush grid has a non-integer stride.
  PatchGrid(const PatchGridOptions& options, int64_t image_h, int64_t image_w);

  /// float [B,C,H,W] -> float [B,P,C,I,I].
  at::Tensor cut(const at::Tensor& images) const;

  const std::vector<PatchBox>& boxes() const { return boxes_; }
  int64_t count() const { return static_cast<int64_t>(boxes_.size()); }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t image_h() const { return image_h_; }
  int64_t image_w() const { return image_w_; }
  const PatchGridOptions& options() const { return options_; }
  /// A one-line description, e.g. "2x2 grid of 18x18 patches, stride 10x10, resized to 32x32".
  std::string describe() const;

 private:
  PatchGridOptions options_;
  int64_t image_h_ = 0;
  int64_t image_w_ = 0;
  int64_t rows_ = 0;
  int64_t cols_ = 0;
  int64_t stride_h_ = 0;
  int64_t stride_w_ = 0;
  std::vector<PatchBox> boxes_;
};

}  // namespace patchwise
