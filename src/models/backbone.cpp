#include "patchwise/models/backbone.h"

#include <torch/torch.h>

#include <vector>

#include "patchwise/core/error.h"
#include "patchwise/models/max_pool.h"

namespace patchwise {
namespace {

namespace nn = torch::nn;

/// The smallest input each backbone can take (see backbone.h).
constexpr int64_t kSmallCnnMinInput = 22;
constexpr int64_t kVgg16MinInput = 32;

/// One entry per conv layer of VGG16; 0 closes a block with a 2x2 max pool.
const std::vector<int64_t>& vgg16_plan() {
  static const std::vector<int64_t> plan = {
      64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
  return plan;
}

/// A 3x3 convolution that takes a one-channel input through LibTorch's direct
/// (im2col + matrix product) kernel on the CPU: oneDNN, LibTorch's default there,
/// is several times slower with a single input channel (measured 4-10x on the
/// first layers here, bench/step_breakdown). Same parameters, same names.
class GrayConvImpl : public nn::Conv2dImpl {
 public:
  GrayConvImpl(int64_t in, int64_t out, int64_t padding)
      : nn::Conv2dImpl(nn::Conv2dOptions(in, out, /*kernel_size=*/3).padding(padding)),
        padding_(padding) {}
  at::Tensor forward(const at::Tensor& x) {
    if (!x.device().is_cpu() || weight.size(1) != 1) return nn::Conv2dImpl::forward(x);
    return at::thnn_conv2d(x, weight, {3, 3}, bias, {1, 1}, {padding_, padding_});
  }

 private:
  int64_t padding_;
};
TORCH_MODULE(GrayConv);

/// Appends conv -> [batch norm] -> [2x2 max pool] -> ReLU to `seq`. ReLU and max
/// pooling commute (ReLU is monotonic), so pooling first gives the same values and
/// gradients while the ReLU touches a quarter of the elements. The module indices
/// are those of conv -> [bn] -> ReLU -> [pool], so model files are unaffected.
void add_conv(
    nn::Sequential& seq, int64_t in, int64_t out, int64_t padding, bool batch_norm, bool pool) {
  if (in == 1) {
    seq->push_back(GrayConv(in, out, padding));
  } else {
    seq->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, /*kernel_size=*/3).padding(padding)));
  }
  if (batch_norm) seq->push_back(nn::BatchNorm2d(out));
  if (pool) seq->push_back(nn::Functional([](const at::Tensor& x) { return max_pool_2x2(x); }));
  seq->push_back(nn::ReLU(nn::ReLUOptions().inplace(true)));
}

/// The layers' state as batch_norm_max_pool_2x2 takes it.
BatchNormState batch_norm_state(nn::BatchNorm2dImpl& bn) {
  return {
      bn.weight,
      bn.bias,
      bn.running_mean,
      bn.running_var,
      bn.num_batches_tracked,
      bn.options.momentum(),
      bn.options.eps()};
}

/// Runs the conv stack. In training, a batch norm followed by the pool (add_conv's
/// only Functional) runs as one step, batch_norm_max_pool_2x2: the same function with
/// one pass less over the largest activations.
at::Tensor forward_stack(nn::Sequential& seq, at::Tensor x) {
  auto layer = seq->begin();
  const auto layers = static_cast<std::ptrdiff_t>(seq->size());
  for (std::ptrdiff_t i = 0; i < layers; ++i) {
    auto bn = std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(layer[i].ptr());
    const bool pool_next =
        i + 1 < layers && std::dynamic_pointer_cast<nn::FunctionalImpl>(layer[i + 1].ptr());
    if (bn && pool_next && bn->is_training()) {
      x = batch_norm_max_pool_2x2(x, batch_norm_state(*bn));
      ++i;
    } else {
      x = layer[i].forward(x);
    }
  }
  return x;
}

class SmallCnnImpl : public BackboneImpl {
 public:
  explicit SmallCnnImpl(const BackboneOptions& o) : options_(o) {
    conv_ = nn::Sequential();
    int64_t in = o.in_channels;
    int64_t side = o.input;
    for (int64_t out : {16, 32, 64}) {
      add_conv(conv_, in, out, /*padding=*/0, o.batch_norm, /*pool=*/true);
      in = out;
      side = (side - 2) / 2;
    }
    flat_ = in * side * side;
    register_module("conv", conv_);
    fc1_ = register_module("fc1", nn::Linear(flat_, kHidden));
    dropout_ = register_module("dropout", nn::Dropout(o.dropout));
    fc2_ = register_module("fc2", nn::Linear(kHidden, o.num_classes));
  }
  at::Tensor features(const at::Tensor& x) override {
    return torch::relu(fc1_->forward(forward_stack(conv_, x).flatten(1)));
  }
  at::Tensor classify(const at::Tensor& f) override { return fc2_->forward(dropout_->forward(f)); }
  int64_t feature_dim() const override { return kHidden; }
  std::vector<at::Tensor> classifier_parameters() const override { return fc2_->parameters(); }
  void pretty_print(std::ostream& stream) const override {
    stream << "patchwise::SmallCnn(in_channels=" << options_.in_channels
           << ", input=" << options_.input << ", classes=" << options_.num_classes
           << ", batch_norm=" << options_.batch_norm << ")";
  }

 private:
  static constexpr int64_t kHidden = 64;
  BackboneOptions options_;
  int64_t flat_ = 0;
  nn::Sequential conv_{nullptr};
  nn::Linear fc1_{nullptr}, fc2_{nullptr};
  nn::Dropout dropout_{nullptr};
};

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
  int64_t feature_dim() const override { return 512; }
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

void check_options(const BackboneOptions& o) {
  check_option(
      o.name == "small-cnn" || o.name == "vgg16",
      "backbone",
      "unknown backbone '{}', expected small-cnn or vgg16",
      o.name);
  check_input(
      o.in_channels == 1 || o.in_channels == 3,
      "{}: {} input channels, expected 1 or 3",
      o.name,
      o.in_channels);
  check_input(o.num_classes >= 2, "{}: {} classes, expected at least 2", o.name, o.num_classes);
  int64_t min_input = o.name == "vgg16" ? kVgg16MinInput : kSmallCnnMinInput;
  check_option(
      o.input >= min_input,
      "input",
      "{} is too small for {}, expected at least {}",
      o.input,
      o.name,
      min_input);
  check_option(
      o.dropout >= 0.0 && o.dropout < 1.0, "dropout", "{}, expected a value in [0, 1)", o.dropout);
}

}  // namespace

std::shared_ptr<BackboneImpl> make_backbone(const BackboneOptions& options) {
  check_options(options);
  if (options.name == "vgg16") return std::make_shared<Vgg16Impl>(options);
  return std::make_shared<SmallCnnImpl>(options);
}

int64_t backbone_forward_macs(const BackboneOptions& o) {
  int64_t macs = 0;
  int64_t in = o.in_channels;
  int64_t side = o.input;
  if (o.name == "vgg16") {
    for (int64_t out : vgg16_plan()) {
      if (out == 0) {
        side /= 2;
        continue;
      }
      macs += side * side * out * in * 9;
      in = out;
    }
    return macs + in * o.num_classes;
  }
  for (int64_t out : {16, 32, 64}) {
    side -= 2;
    macs += side * side * out * in * 9;
    side /= 2;
    in = out;
  }
  return macs + in * side * side * 64 + 64 * o.num_classes;
}

}  // namespace patchwise
