#pragma once
// A labelled image set: a list of items (an image and a label) plus class names. Its
// pixels are either packed in memory as uint8 [N,C,H,W] (a 60k-image 28x28 set is
// 47 MB, not 188 MB of floats; IDX, CIFAR and image sets that fit) or left in their
// files and decoded when a batch needs them (image sets larger than memory).
// Conversion to float happens per batch either way.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace patchwise {

/// The files of a set read lazily, and the size every item is decoded to.
struct ImageFiles {
  std::vector<std::string> paths;
  int64_t channels = 0;
  int64_t height = 0;
  int64_t width = 0;
};

struct Dataset {
  at::Tensor images;                     ///< uint8 [N,C,H,W], contiguous; undefined when lazy
  ImageFiles files;                      ///< the items' files when lazy
  at::Tensor labels;                     ///< int64 [N], each in [0, num_classes)
  std::vector<std::string> class_names;  ///< one name per class
  std::string source;                    ///< where it was read from, for messages

  bool in_memory() const { return images.defined(); }
  int64_t size() const {
    return in_memory() ? images.size(0) : static_cast<int64_t>(files.paths.size());
  }
  int64_t channels() const { return in_memory() ? images.size(1) : files.channels; }
  int64_t height() const { return in_memory() ? images.size(2) : files.height; }
  int64_t width() const { return in_memory() ? images.size(3) : files.width; }
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }

  /// Item i as uint8 [C,H,W]; a lazy set decodes its file now (resized to H x W when it
  /// differs). Throws InputError naming the file when it cannot be decoded.
  at::Tensor image(int64_t i) const;
  /// image(i) written to `out` (C*H*W bytes), with no LibTorch operator: safe on a
  /// loader thread beside a training step.
  void copy_image(int64_t i, uint8_t* out) const;
};

/// The items at `index`, in that order: the one place a set is subset (limits,
/// validation splits, shards), for packed and lazy sets alike.
Dataset subset(const Dataset& data, const std::vector<int64_t>& index);

/// Per-channel input normalization: x = (pixel / 255 - mean[c]) / std[c].
struct Normalization {
  std::vector<double> mean;
  std::vector<double> std;
};

/// The mean and standard deviation of each channel over `images` (uint8 [N,C,H,W]).
Normalization compute_normalization(const at::Tensor& images);
/// The same over every item of `data` (a lazy set decodes each file once).
Normalization compute_normalization(const Dataset& data);

/// uint8 [N,C,H,W] to normalized float [N,C,H,W].
at::Tensor normalize_images(const at::Tensor& images, const Normalization& norm);

/// The first `limit` items of `data` (all of them when limit <= 0 or >= size).
Dataset take_first(const Dataset& data, int64_t limit);

/// Fashion-MNIST's ten class names, in label order.
const std::vector<std::string>& fashion_mnist_class_names();

}  // namespace patchwise
