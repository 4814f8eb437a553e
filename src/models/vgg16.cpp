// vgg16: the question's network (see backbone.h).
#include <fmt/format.h>

#include <map>
#include <string>
#include <vector>

#include "layers.h"

namespace patchwise::detail {
namespace {

namespace nn = torch::nn;

constexpr int64_t kMinInput = 32;  // five 2x2 pools
constexpr int64_t kFeatures = 512;

/// One entry per conv layer of VGG16; 0 closes a block with a 2x2 max pool.
const std::vector<int64_t>& vgg16_plan() {
  static const std::vector<int64_t> plan = {
      64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
  return plan;
}

class Vgg16Impl : public BackboneImpl {
 public:
  explicit Vgg16Impl(const BackboneOptions& o) : options_(o) {
    conv_ = nn::Sequential();
    int64_t in = o.in_channels;
    const std::vector<int64_t>& plan = vgg16_plan();
    for (size_t i = 0; i < plan.size(); ++i) {
      if (plan[i] == 0) continue;  // the pool went in with the conv before it
      const bool pool = i + 1 < plan.size() && plan[i + 1] == 0;
      add_conv(conv_, in, plan[i], /*padding=*/1, o.batch_norm, pool);
      in = plan[i];
    }
    register_module("conv", conv_);
    fc_ = register_module("fc", nn::Linear(in, o.num_classes));
  }
  at::Tensor features(const at::Tensor& x) override {
    return std::get<0>(forward_stack(conv_, x).flatten(2).max(2));  // global max pooling
  }
  at::Tensor classify(const at::Tensor& f) override { return fc_->forward(f); }
  int64_t feature_dim() const override { return kFeatures; }
  std::vector<at::Tensor> classifier_parameters() const override { return fc_->parameters(); }
  void pretty_print(std::ostream& stream) const override {
    stream << "patchwise::Vgg16(in_channels=" << options_.in_channels
           << ", input=" << options_.input << ", classes=" << options_.num_classes
           << ", batch_norm=" << options_.batch_norm << ")";
  }

 private:
  BackboneOptions options_;
  nn::Sequential conv_{nullptr};
  nn::Linear fc_{nullptr};
};

int64_t vgg16_macs(const BackboneOptions& o) {
  int64_t macs = 0;
  int64_t in = o.in_channels;
  int64_t side = o.input;
  for (int64_t out : vgg16_plan()) {
    if (out == 0) {
      side /= 2;
      continue;
    }
    macs += conv_macs(side, in, out, 3);
    in = out;
  }
  return macs + in * o.num_classes;
}

using Tensors = std::map<std::string, at::Tensor>;

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

/// The layers of a Sequential at `prefix` ("features.", "conv."): index -> batch norm
/// (true) or convolution (false), told apart by running statistics or 1-D weights.
std::map<int64_t, bool> layer_kinds(const Tensors& state, const std::string& prefix) {
  std::map<int64_t, bool> kinds;
  for (const auto& [name, tensor] : state) {
    if (!starts_with(name, prefix)) continue;
    const size_t dot = name.find('.', prefix.size());
    const std::string index = name.substr(prefix.size(), dot - prefix.size());
    if (dot == std::string::npos || index.empty() || index.size() > 9 ||
        index.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    const std::string field = name.substr(dot + 1);
    const bool norm = field == "running_mean" || field == "running_var" ||
                      field == "num_batches_tracked" || (field == "weight" && tensor.dim() == 1);
    kinds[std::stoll(index)] |= norm;
  }
  return kinds;
}

/// torchvision VGG's "features.<i>." -> ours "conv.<j>.": the k-th convolution onto the
/// k-th, and likewise the batch norms.
std::map<std::string, std::string> torchvision_layers(const Tensors& file, const Tensors& own) {
  const std::string mine = "conv.";
  std::vector<int64_t> our_layers[2];
  for (const auto& [index, norm] : layer_kinds(own, mine)) our_layers[norm].push_back(index);
  std::map<std::string, std::string> layers;
  size_t seen[2] = {0, 0};
  for (const auto& [index, norm] : layer_kinds(file, "features.")) {
    const size_t k = seen[norm]++;
    if (k < our_layers[norm].size()) {
      layers[fmt::format("features.{}.", index)] = fmt::format("{}{}.", mine, our_layers[norm][k]);
    }
  }
  return layers;
}

}  // namespace

BackboneInfo vgg16_backbone() {
  return {
      "vgg16",
      "13 same conv3x3 in 5 blocks (64 to 512) with 2x2 max pools, global max pooling, dense",
      kMinInput,
      BatchNormUse::kOption,
      [](const BackboneOptions& o) -> std::shared_ptr<BackboneImpl> {
        return std::make_shared<Vgg16Impl>(o);
      },
      vgg16_macs,
      torchvision_layers};
}

}  // namespace patchwise::detail
