#include "patchwise/data/dataset.h"

#include <array>
#include <cmath>

#include <torch/torch.h>

namespace patchwise {

Normalization compute_normalization(const at::Tensor& images) {
  TORCH_CHECK(images.dim() == 4 && images.scalar_type() == torch::kUInt8,
              "compute_normalization expects uint8 [N,C,H,W], got ", images.sizes());
  // A histogram of the 256 values per channel gives the exact mean and variance
  // without a floating-point copy of the data (376 MB for Fashion-MNIST's 60,000).
  const at::Tensor x = images.contiguous();
  const int64_t n = x.size(0), channels = x.size(1), plane = x.size(2) * x.size(3);
  const uint8_t* data = x.data_ptr<uint8_t>();
  Normalization norm;
  for (int64_t c = 0; c < channels; ++c) {
    std::array<uint64_t, 256> counts{};
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* p = data + (i * channels + c) * plane;
      for (int64_t k = 0; k < plane; ++k) ++counts[p[k]];
    }
    const double total = double(n) * double(plane);
    double mean = 0;
    for (int v = 0; v < 256; ++v) mean += double(counts[v]) * (v / 255.0);
    mean /= total;
    double variance = 0;
    for (int v = 0; v < 256; ++v) variance += double(counts[v]) * std::pow(v / 255.0 - mean, 2);
    const double std = std::sqrt(variance / total);
    norm.mean.push_back(mean);
    norm.std.push_back(std > 1e-8 ? std : 1.0);
  }
  return norm;
}

at::Tensor normalize_images(const at::Tensor& images, const Normalization& norm) {
  int64_t channels = images.size(1);
  TORCH_CHECK(static_cast<int64_t>(norm.mean.size()) == channels, "normalization has ",
              norm.mean.size(), " channels, images have ", channels);
  auto options = torch::TensorOptions().dtype(torch::kFloat32).device(images.device());
  at::Tensor mean = torch::tensor(norm.mean, torch::kFloat64).to(options).view({1, channels, 1, 1});
  at::Tensor std = torch::tensor(norm.std, torch::kFloat64).to(options).view({1, channels, 1, 1});
  return images.to(torch::kFloat32).div_(255.0f).sub_(mean).div_(std);
}

Dataset take_first(const Dataset& data, int64_t limit) {
  if (limit <= 0 || limit >= data.size()) return data;
  Dataset out = data;
  out.images = data.images.narrow(0, 0, limit).contiguous();
  out.labels = data.labels.narrow(0, 0, limit).contiguous();
  return out;
}

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                                 "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                                 "Bag",         "Ankle boot"};
  return names;
}

}  // namespace patchwise
