#pragma once
// A labelled image set held compactly: images stay uint8 [N,C,H,W] (a 60k-image
// 28x28 set is 47 MB, not 188 MB of floats); conversion to float happens per batch.

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace patchwise {

struct Dataset {
  at::Tensor images;                     ///< uint8 [N,C,H,W], contiguous
  at::Tensor labels;                     ///< int64 [N], each in [0, num_classes)
  std::vector<std::string> class_names;  ///< one name per class
  std::string source;                    ///< where it was read from, for messages

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
  int64_t channels() const { return images.size(1); }
  int64_t height() const { return images.size(2); }
  int64_t width() const { return images.size(3); }
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
};

/// Per-channel input normalization: x = (pixel / 255 - mean[c]) / std[c].
struct Normalization {
  std::vector<double> mean;
  std::vector<double> std;
};

/// The mean and standard deviation of each channel over `images` (uint8 [N,C,H,W]).
Normalization compute_normalization(const at::Tensor& images);

/// uint8 [N,C,H,W] to normalized float [N,C,H,W].
at::Tensor normalize_images(const at::Tensor& images, const Normalization& norm);

/// The first `limit` items of `data` (all of them when limit <= 0 or >= size).
Dataset take_first(const Dataset& data, int64_t limit);

/// Fashion-MNIST's ten class names, in label order.
const std::vector<std::string>& fashion_mnist_class_names();

}  // namespace patchwise
