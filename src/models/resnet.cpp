// Residual networks for small inputs (He et al. 2016), with PyTorch's (torchvision's)
// parameter names: conv1, bn1, layerN.B.{conv1,bn1,conv2,bn2,downsample.{0,1}}, fc.
//   resnet20 / resnet56: the CIFAR networks: conv3x3 16 | 3 stages of 3 (9) basic blocks
//     of 16, 32, 64 channels, the 2nd and 3rd starting with stride 2 | global average
//     pooling (= features, F=64) | dense K.
//   resnet18: torchvision's ResNet-18 with a stem for 32x32 and smaller (conv3x3 64,
//     stride 1, no max pool): 4 stages of 2 basic blocks of 64, 128, 256, 512 | global
//     average pooling (F=512) | dense K.
//   bagnet11: a BagNet (Brendel & Bethge 2019) for small inputs: the same residual network
//     with conv3x3 32 | 3 stages of 2 blocks of 32, 64, 128 channels in which only the
//     first convolution of each stage's first block is 3x3 and every other one 1x1, so that
//     every output position sees an 11x11 window of the input (3 + 2 + 2*1 + 2*2): its
//     features are an average of local features, its logits an average of local evidence.
// A block whose stride or width changes projects its shortcut with conv1x1 + batch norm
// (option B). Batch norm always; the convolutions have no bias.
#include <vector>

#include "blocked.h"
#include "layers.h"

namespace patchwise::detail {
namespace {

namespace nn = torch::nn;

constexpr int64_t kMinInput = 8;

struct ResNetPlan {
  const char* label;
  int64_t stem;                 ///< channels of the stem convolution
  std::vector<int64_t> widths;  ///< channels of each stage
  int64_t blocks;               ///< basic blocks per stage
  bool local = false;           ///< BagNet: 3x3 only in each stage's first convolution

  /// The kernel of convolution `conv` (0, 1) of block `block` of a stage.
  int64_t kernel(int64_t block, int conv) const {
    return !local || (block == 0 && conv == 0) ? 3 : 1;
  }
};

const ResNetPlan kResNet20{"ResNet20", 16, {16, 32, 64}, 3};
const ResNetPlan kResNet56{"ResNet56", 16, {16, 32, 64}, 9};
const ResNetPlan kResNet18{"ResNet18", 64, {64, 128, 256, 512}, 2};
const ResNetPlan kBagNet11{"BagNet11", 32, {32, 64, 128}, 2, /*local=*/true};

nn::Conv2dOptions conv_options(int64_t in, int64_t out, int64_t k, int64_t stride) {
  return nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2).bias(false);
}

/// Kaiming-normal convolutions (fan out), as torchvision starts its ResNets.
void init_conv(nn::Conv2dImpl& conv) {
  nn::init::kaiming_normal_(conv.weight, 0.0, torch::kFanOut, torch::kReLU);
}

class BasicBlockImpl : public nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride, int64_t k1 = 3, int64_t k2 = 3) {
    conv1_ = register_module("conv1", nn::Conv2d(conv_options(in, out, k1, stride)));
    bn1_ = register_module("bn1", nn::BatchNorm2d(out));
    conv2_ = register_module("conv2", nn::Conv2d(conv_options(out, out, k2, 1)));
    bn2_ = register_module("bn2", nn::BatchNorm2d(out));
    init_conv(*conv1_);
    init_conv(*conv2_);
    if (stride != 1 || in != out) {
      nn::Conv2d project(conv_options(in, out, 1, stride));
      init_conv(*project);
      downsample_ = register_module("downsample", nn::Sequential(project, nn::BatchNorm2d(out)));
    }
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor y = bn1_->forward(conv1_->forward(x)).relu_();
    y = bn2_->forward(conv2_->forward(y));
    y += downsample_ ? downsample_->forward(x) : x;
    return y.relu_();
  }
  /// The same on a blocked tensor (src/models/blocked.h), in training.
  at::Tensor forward_blocked(const at::Tensor& xb) {
    const int64_t stride = (*conv1_->options.stride())[0];
    at::Tensor y = blocked::batch_norm(blocked::conv(xb, conv1_->weight, stride), *bn1_, true);
    y = blocked::batch_norm(blocked::conv(y, conv2_->weight, 1), *bn2_, false);
    if (downsample_) {
      auto& project = *downsample_[0]->as<nn::Conv2dImpl>();
      auto& norm = *downsample_[1]->as<nn::BatchNorm2dImpl>();
      y += blocked::batch_norm(blocked::conv(xb, project.weight, stride), norm, false);
    } else {
      y += xb;
    }
    return y.relu_();
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  nn::Sequential downsample_{nullptr};
};
TORCH_MODULE(BasicBlock);

class ResNetImpl : public BackboneImpl {
 public:
  ResNetImpl(const ResNetPlan& plan, const BackboneOptions& o) : plan_(plan), options_(o) {
    conv1_ = register_module("conv1", GrayConv(conv_options(o.in_channels, plan.stem, 3, 1)));
    init_conv(*conv1_);
    bn1_ = register_module("bn1", nn::BatchNorm2d(plan.stem));
    int64_t in = plan.stem;
    for (size_t s = 0; s < plan.widths.size(); ++s) {
      nn::Sequential stage;
      for (int64_t b = 0; b < plan.blocks; ++b) {
        const int64_t stride = s > 0 && b == 0 ? 2 : 1;
        stage->push_back(
            BasicBlock(in, plan.widths[s], stride, plan.kernel(b, 0), plan.kernel(b, 1)));
        in = plan.widths[s];
      }
      stages_.push_back(register_module("layer" + std::to_string(s + 1), stage));
    }
    fc_ = register_module("fc", nn::Linear(in, o.num_classes));
    // Channels-last weights and activations: oneDNN then convolves without reordering
    // to its blocked layout and back around every layer (measured on 2 cores of an AMD
    // EPYC, ResNet-20 on 32x32: training 14 % and inference 12 % faster).
    for (auto& p : parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
    }
  }
  at::Tensor features(const at::Tensor& x) override {
    // Training; evaluation without gradients where Winograd serves a stage (with them,
    // e.g. for the gradients of the input, LibTorch's kernels).
    const bool blocked_pass =
        is_training() || (!at::GradMode::is_enabled() && winograd_stage(x.size(2), x.size(3)));
    if (blocked_pass && blocked_widths() && blocked::use_for(x)) return features_blocked(x);
    at::Tensor stem = conv1_->forward(x).contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor y = bn1_->forward(stem).relu_();
    for (auto& stage : stages_) y = stage->forward(y);
    return y.mean({2, 3});  // global average pooling
  }
  /// A pass on oneDNN's blocked layout (models/kernels.h): the stem reads the plain
  /// input and writes blocks, everything after it is blocked up to the pooling.
  at::Tensor features_blocked(const at::Tensor& x) {
    at::Tensor y = blocked::batch_norm(blocked::conv(x, conv1_->weight, 1), *bn1_, true);
    for (auto& stage : stages_) {
      for (const auto& block : stage->children())
        y = block->as<BasicBlockImpl>()->forward_blocked(y);
    }
    return blocked::mean_pool(y);
  }
  /// Whether the 3x3 stride-1 convolutions of some stage run as Winograd on an input of
  /// `height` x `width` (the stem keeps the size, each later stage halves it; BagNet's
  /// only 3x3 stride-1 convolution is the first stage's first).
  bool winograd_stage(int64_t height, int64_t width) const {
    for (size_t s = 0; s < plan_.widths.size() && (s == 0 || !plan_.local); ++s) {
      if (blocked::winograd_for(plan_.widths[s], height, width)) return true;
      height = (height + 1) / 2;
      width = (width + 1) / 2;
    }
    return false;
  }
  /// Whether every width is a whole number of oneDNN's blocks (16 channels, or 8).
  bool blocked_widths() const {
    bool whole = blocked::holds_blocks(plan_.stem);
    for (const int64_t w : plan_.widths) whole = whole && blocked::holds_blocks(w);
    return whole;
  }
  at::Tensor classify(const at::Tensor& f) override { return fc_->forward(f); }
  int64_t feature_dim() const override { return plan_.widths.back(); }
  std::vector<at::Tensor> classifier_parameters() const override { return fc_->parameters(); }
  void pretty_print(std::ostream& stream) const override {
    stream << "patchwise::" << plan_.label << "(in_channels=" << options_.in_channels
           << ", input=" << options_.input << ", classes=" << options_.num_classes << ")";
  }

 private:
  ResNetPlan plan_;
  BackboneOptions options_;
  GrayConv conv1_{nullptr};
  nn::BatchNorm2d bn1_{nullptr};
  std::vector<nn::Sequential> stages_;
  nn::Linear fc_{nullptr};
};

int64_t resnet_macs(const ResNetPlan& plan, const BackboneOptions& o) {
  int64_t side = o.input;
  int64_t macs = conv_macs(side, o.in_channels, plan.stem, 3);
  int64_t in = plan.stem;
  for (size_t s = 0; s < plan.widths.size(); ++s) {
    const int64_t out = plan.widths[s];
    for (int64_t b = 0; b < plan.blocks; ++b) {
      const bool down = s > 0 && b == 0;
      if (down) side = (side - 1) / 2 + 1;  // padding k/2, stride 2
      macs += conv_macs(side, in, out, plan.kernel(b, 0)) +
              conv_macs(side, out, out, plan.kernel(b, 1));
      if (down || in != out) macs += conv_macs(side, in, out, 1);
      in = out;
    }
  }
  return macs + in * o.num_classes;
}

/// The registry entry of the network `Plan` describes.
template <const ResNetPlan& Plan>
BackboneInfo resnet_backbone(const char* name, const char* summary) {
  return {
      name,
      summary,
      kMinInput,
      BatchNormUse::kAlways,
      [](const BackboneOptions& o) -> std::shared_ptr<BackboneImpl> {
        return std::make_shared<ResNetImpl>(Plan, o);
      },
      [](const BackboneOptions& o) { return resnet_macs(Plan, o); },
      nullptr};
}

}  // namespace

BackboneInfo resnet20_backbone() {
  return resnet_backbone<kResNet20>(
      "resnet20",
      "CIFAR ResNet-20: conv3x3 16, 3x3 basic blocks (16, 32, 64), batch norm, average pooling");
}

BackboneInfo resnet56_backbone() {
  return resnet_backbone<kResNet56>(
      "resnet56",
      "CIFAR ResNet-56: conv3x3 16, 3x9 basic blocks (16, 32, 64), batch norm, average pooling");
}

BackboneInfo bagnet11_backbone() {
  return resnet_backbone<kBagNet11>(
      "bagnet11",
      "BagNet for small inputs: resnet with conv3x3 only first in each stage (32, 64, 128), "
      "receptive field 11x11, batch norm, average pooling");
}

BackboneInfo resnet18_backbone() {
  return resnet_backbone<kResNet18>(
      "resnet18",
      "ResNet-18 with a small-input stem: conv3x3 64, 4x2 basic blocks (64 to 512), batch "
      "norm, average pooling");
}

}  // namespace patchwise::detail
