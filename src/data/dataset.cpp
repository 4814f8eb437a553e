#include "patchwise/data/dataset.h"

#include <torch/torch.h>

#include <array>
#include <cmath>
#include <cstring>
#include <numeric>

#include "patchwise/data/image.h"

namespace patchwise {

namespace {

/// Per-channel counts of the 256 values: the exact mean and variance without a
/// floating-point copy of the data (376 MB for Fashion-MNIST's 60,000).
using Histograms = std::vector<std::array<uint64_t, 256>>;

void count_values(const uint8_t* image, int64_t channels, int64_t plane, Histograms& counts) {
  for (int64_t c = 0; c < channels; ++c) {
    const uint8_t* p = image + c * plane;
    auto& h = counts[static_cast<size_t>(c)];
    for (int64_t k = 0; k < plane; ++k) ++h[p[k]];
  }
}

Normalization from_histograms(const Histograms& counts) {
  Normalization norm;
  for (const auto& h : counts) {
    double total = 0;
    for (uint64_t n : h) total += double(n);
    double mean = 0;
    for (int v = 0; v < 256; ++v) mean += double(h[v]) * (v / 255.0);
    mean /= total;
    double variance = 0;
    for (int v = 0; v < 256; ++v) variance += double(h[v]) * std::pow(v / 255.0 - mean, 2);
    const double std = std::sqrt(variance / total);
    norm.mean.push_back(mean);
    norm.std.push_back(std > 1e-8 ? std : 1.0);
  }
  return norm;
}

}  // namespace

Normalization compute_normalization(const at::Tensor& images) {
  TORCH_CHECK(
      images.dim() == 4 && images.scalar_type() == torch::kUInt8,
      "compute_normalization expects uint8 [N,C,H,W], got ",
      images.sizes());
  const at::Tensor x = images.contiguous();
  const int64_t n = x.size(0), channels = x.size(1), plane = x.size(2) * x.size(3);
  Histograms counts(static_cast<size_t>(channels));
  for (int64_t i = 0; i < n; ++i) {
    count_values(x.data_ptr<uint8_t>() + i * channels * plane, channels, plane, counts);
  }
  return from_histograms(counts);
}

Normalization compute_normalization(const Dataset& data) {
  if (data.in_memory()) return compute_normalization(data.images);
  const int64_t channels = data.channels(), plane = data.height() * data.width();
  Histograms counts(static_cast<size_t>(channels));
  std::vector<uint8_t> image(static_cast<size_t>(channels * plane));
  for (int64_t i = 0; i < data.size(); ++i) {
    data.copy_image(i, image.data());
    count_values(image.data(), channels, plane, counts);
  }
  return from_histograms(counts);
}

at::Tensor Dataset::image(int64_t i) const {
  TORCH_CHECK(i >= 0 && i < size(), "Dataset::image: item ", i, " of ", size());
  if (in_memory()) return images[i];
  at::Tensor out = torch::empty({channels(), height(), width()}, torch::kUInt8);
  copy_image(i, out.data_ptr<uint8_t>());
  return out;
}

void Dataset::copy_image(int64_t i, uint8_t* out) const {
  TORCH_CHECK(i >= 0 && i < size(), "Dataset::copy_image: item ", i, " of ", size());
  const int64_t bytes = channels() * height() * width();
  if (in_memory()) {
    std::memcpy(out, images.data_ptr<uint8_t>() + i * bytes, static_cast<size_t>(bytes));
    return;
  }
  const std::string& path = files.paths[static_cast<size_t>(i)];
  read_image_into(path, files.channels, files.height, files.width, out);
}

Dataset subset(const Dataset& data, const std::vector<int64_t>& index) {
  Dataset out = data;
  const at::Tensor rows = torch::tensor(index, torch::kInt64);
  out.labels = data.labels.index_select(0, rows).contiguous();
  if (data.in_memory()) {
    out.images = data.images.index_select(0, rows).contiguous();
  } else {
    out.files.paths.clear();
    for (int64_t i : index) out.files.paths.push_back(data.files.paths.at(static_cast<size_t>(i)));
  }
  return out;
}

at::Tensor normalize_images(const at::Tensor& images, const Normalization& norm) {
  int64_t channels = images.size(1);
  TORCH_CHECK(
      static_cast<int64_t>(norm.mean.size()) == channels,
      "normalization has ",
      norm.mean.size(),
      " channels, images have ",
      channels);
  auto options = torch::TensorOptions().dtype(torch::kFloat32).device(images.device());
  at::Tensor mean = torch::tensor(norm.mean, torch::kFloat64).to(options).view({1, channels, 1, 1});
  at::Tensor std = torch::tensor(norm.std, torch::kFloat64).to(options).view({1, channels, 1, 1});
  return images.to(torch::kFloat32).div_(255.0f).sub_(mean).div_(std);
}

Dataset take_first(const Dataset& data, int64_t limit) {
  if (limit <= 0 || limit >= data.size()) return data;
  std::vector<int64_t> first(static_cast<size_t>(limit));
  std::iota(first.begin(), first.end(), 0);
  return subset(data, first);
}

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> names = {
      "T-shirt/top",
      "Trouser",
      "Pullover",
      "Dress",
      "Coat",
      "Sandal",
      "Shirt",
      "Sneaker",
      "Bag",
      "Ankle boot"};
  return names;
}

}  // namespace patchwise
