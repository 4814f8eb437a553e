// small-cnn: the seed answer's network (see backbone.h).
#include "layers.h"

namespace patchwise::detail {
namespace {

namespace nn = torch::nn;

constexpr int64_t kHidden = 64;
constexpr int64_t kMinInput = 22;  // 22 -> 20 -> 10 -> 8 -> 4 -> 2 -> 1

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
    register_module("conv", conv_);
    fc1_ = register_module("fc1", nn::Linear(in * side * side, kHidden));
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
  BackboneOptions options_;
  nn::Sequential conv_{nullptr};
  nn::Linear fc1_{nullptr}, fc2_{nullptr};
  nn::Dropout dropout_{nullptr};
};

int64_t small_cnn_macs(const BackboneOptions& o) {
  int64_t macs = 0;
  int64_t in = o.in_channels;
  int64_t side = o.input;
  for (int64_t out : {16, 32, 64}) {
    side -= 2;
    macs += conv_macs(side, in, out, 3);
    side /= 2;
    in = out;
  }
  return macs + in * side * side * kHidden + kHidden * o.num_classes;
}

}  // namespace

BackboneInfo small_cnn_backbone() {
  return {
      "small-cnn",
      "3 valid conv3x3 (16, 32, 64) each with a 2x2 max pool, dense 64, dropout, dense",
      kMinInput,
      BatchNormUse::kOption,
      [](const BackboneOptions& o) -> std::shared_ptr<BackboneImpl> {
        return std::make_shared<SmallCnnImpl>(o);
      },
      small_cnn_macs,
      nullptr};
}

}  // namespace patchwise::detail
