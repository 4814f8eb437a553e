#include "patchwise/data/dataset.h"

#include <torch/torch.h>

namespace patchwise {

Normalization compute_normalization(const at::Tensor& images) {
  Normalization norm;
  int64_t channels = images.size(1);
  for (int64_t c = 0; c < channels; ++c) {
    at::Tensor plane = images.select(1, c).to(torch::kFloat64).div_(255.0);
    double mean = plane.mean().item<double>();
    double std = plane.std(/*unbiased=*/false).item<double>();
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
