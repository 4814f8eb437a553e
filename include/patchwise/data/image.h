#pragma once
// Image files (PNG, JPEG and whatever else OpenCV decodes) to and from uint8
// [C,H,W] tensors, channels in RGB order.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace patchwise {

/// Reads `path` as uint8 [C,H,W]. channels: 1 (grayscale), 3 (RGB), or 0 to keep
/// the file's own (grayscale files give 1, everything else 3). Throws InputError
/// when the file is missing or cannot be decoded.
at::Tensor read_image(const std::string& path, int64_t channels = 0);

/// The bytes of an image file decoded as read_image decodes the file, with the same
/// checks; `name` names it in errors. PNG and JPEG are decoded in memory, the other
/// formats through a temporary file.
at::Tensor decode_image(const std::string& bytes, const std::string& name, int64_t channels = 0);

/// read_image(path, channels) resized to h x w like resize_image(), written to `out`
/// (channels * h * w bytes, [C,H,W]) with no LibTorch operator: safe on a loader thread.
void read_image_into(const std::string& path, int64_t channels, int64_t h, int64_t w, uint8_t* out);

/// Writes uint8 [C,H,W] (C = 1 or 3) to `path`; the extension picks the format.
/// Throws InputError when it cannot be written.
void write_image(const std::string& path, const at::Tensor& image);

/// uint8 [C,H,W] encoded as PNG bytes.
std::string encode_png(const at::Tensor& image);

/// uint8 [C,H,W] resized to h x w (area averaging when shrinking, bilinear when enlarging).
at::Tensor resize_image(const at::Tensor& image, int64_t h, int64_t w);

}  // namespace patchwise
