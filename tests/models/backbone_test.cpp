#include "patchwise/models/backbone.h"

#include <gmock/gmock.h>

#include <cmath>
#include <set>
#include <tuple>

#include "patchwise/base/error.h"
#include "patchwise/models/kernels.h"
#include "patchwise/models/registry.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

BackboneOptions options(const std::string& name, int64_t channels, int64_t input) {
  BackboneOptions o;
  o.name = name;
  o.in_channels = channels;
  o.input = input;
  o.num_classes = 7;
  return o;
}

class BackboneTest : public test::SeededTest {};

TEST_F(BackboneTest, SmallCnnMapsPatchesToLogitsAndFeatures) {
  auto net = make_backbone(options("small-cnn", 1, 32));
  at::Tensor x = torch::randn({6, 1, 32, 32});
  EXPECT_EQ(net->forward(x).sizes(), (std::vector<int64_t>{6, 7}));
  EXPECT_EQ(net->features(x).sizes(), (std::vector<int64_t>{6, 64}));
  EXPECT_EQ(net->feature_dim(), 64);
}

TEST_F(BackboneTest, SmallCnnTakesItsSmallestInput) {
  auto net = make_backbone(options("small-cnn", 3, 22));
  EXPECT_EQ(net->forward(torch::randn({2, 3, 22, 22})).sizes(), (std::vector<int64_t>{2, 7}));
}

TEST_F(BackboneTest, Vgg16WithGlobalMaxPoolingOnOneAndThreeChannels) {
  for (int64_t channels : {1, 3}) {
    auto net = make_backbone(options("vgg16", channels, 32));
    at::Tensor x = torch::randn({2, channels, 32, 32});
    EXPECT_EQ(net->features(x).sizes(), (std::vector<int64_t>{2, 512}));
    EXPECT_EQ(net->forward(x).sizes(), (std::vector<int64_t>{2, 7}));
  }
  auto net = make_backbone(options("vgg16", 3, 64));  // larger inputs pool globally
  EXPECT_EQ(net->forward(torch::randn({1, 3, 64, 64})).sizes(), (std::vector<int64_t>{1, 7}));
}

TEST_F(BackboneTest, Vgg16HasThirteenConvolutions) {
  auto net = make_backbone(options("vgg16", 3, 32));
  int convs = 0;
  for (const auto& m : net->modules(/*include_self=*/false)) {
    if (m->name() == "torch::nn::Conv2dImpl") ++convs;
  }
  EXPECT_EQ(convs, 13);
}

TEST_F(BackboneTest, BatchNormVariantRuns) {
  BackboneOptions o = options("small-cnn", 1, 32);
  o.batch_norm = true;
  auto net = make_backbone(o);
  EXPECT_EQ(net->forward(torch::randn({4, 1, 32, 32})).sizes(), (std::vector<int64_t>{4, 7}));
}

TEST_F(BackboneTest, DropoutIsActiveInTrainingAndOffInEvaluation) {
  auto net = make_backbone(options("small-cnn", 1, 32));
  at::Tensor x = torch::randn({8, 1, 32, 32});
  net->train();
  // Not rounding: each pass draws new masks for 8 x 64 features (p = 0.5), which moves the
  // logits by whole features' contributions, far beyond allclose's default rtol 1e-5.
  EXPECT_FALSE(torch::allclose(net->forward(x), net->forward(x)));
  net->eval();
  // The same code on the same data in one process: equal bit for bit.
  EXPECT_TRUE(torch::equal(net->forward(x), net->forward(x)));
}

TEST_F(BackboneTest, RefusesUnknownNamesChannelsAndTooSmallInputs) {
  EXPECT_THAT(
      [] { make_backbone(options("resnet", 1, 32)); },
      ::testing::ThrowsMessage<InputError>(HasSubstr(
          "unknown backbone 'resnet', expected one of: small-cnn, vgg16, resnet20, resnet56, "
          "resnet18, bagnet11")));
  EXPECT_THAT(
      [] { make_backbone(options("resnet20", 1, 7)); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("at least 8")));
  EXPECT_THAT(
      [] { make_backbone(options("small-cnn", 2, 32)); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("expected 1 or 3")));
  EXPECT_THAT(
      [] { make_backbone(options("small-cnn", 1, 16)); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("at least 22")));
  EXPECT_THAT(
      [] { make_backbone(options("vgg16", 1, 28)); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("at least 32")));
}

TEST(BackboneMacs, CountsTheSmallCnnByHand) {
  // conv1 30*30*16*1*9 + conv2 13*13*32*16*9 + conv3 4*4*64*32*9 + fc 256*64 + fc 64*10
  BackboneOptions o;
  o.num_classes = 10;
  EXPECT_EQ(backbone_forward_macs(o), 129600 + 778752 + 294912 + 16384 + 640);
}

TEST(BackboneRegistry, ListsEveryNetworkOnceAndDescribesIt) {
  std::set<std::string> names;
  for (const BackboneInfo& b : backbones()) {
    EXPECT_TRUE(names.insert(b.name).second) << b.name;
    EXPECT_FALSE(b.summary.empty()) << b.name;
    EXPECT_EQ(&find_backbone(b.name), &b);
  }
  EXPECT_EQ(backbone_names(), "small-cnn, vgg16, resnet20, resnet56, resnet18, bagnet11");
}

TEST_F(BackboneTest, ResNetsMapOneOrThreeChannelsToLogitsAndPooledFeatures) {
  const std::vector<std::pair<std::string, int64_t>> nets = {
      {"resnet20", 64}, {"resnet56", 64}, {"resnet18", 512}, {"bagnet11", 128}};
  for (const auto& [name, width] : nets) {
    for (int64_t channels : {1, 3}) {
      auto net = make_backbone(options(name, channels, 8));  // the smallest input
      at::Tensor x = torch::randn({2, channels, 8, 8});
      EXPECT_EQ(net->features(x).sizes(), (std::vector<int64_t>{2, width})) << name;
      EXPECT_EQ(net->forward(x).sizes(), (std::vector<int64_t>{2, 7})) << name;
      EXPECT_EQ(net->feature_dim(), width);
    }
  }
}

TEST_F(BackboneTest, ResNet18HasTorchvisionNamesAndTheCifarParameterCount) {
  BackboneOptions o = options("resnet18", 3, 32);
  o.num_classes = 10;
  auto params = make_backbone(o)->named_parameters();
  for (const char* name :
       {"conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias"}) {
    EXPECT_TRUE(params.contains(name)) << name;
  }
  EXPECT_FALSE(params.contains("layer1.0.downsample.0.weight"));  // same width, stride 1
  EXPECT_FALSE(params.contains("conv1.bias"));                    // convolutions have none
  // torchvision's resnet18 has 11,689,512 parameters; the 3x3 stem saves 49*192 - 9*192
  // and 10 classes instead of 1000 save 990 * 513.
  EXPECT_EQ(backbone_parameters(o), 11689512 - 7680 - 990 * 513);
}

TEST(BackboneMacs, CountsResNet20ByHand) {
  BackboneOptions o;
  o.name = "resnet20";
  o.in_channels = 3;
  o.num_classes = 10;
  const int64_t conv = 2359296;  // every 3x3 conv of equal width: 32*32*16*16*9
  const int64_t stem = 32 * 32 * 3 * 16 * 9;
  const int64_t stage1 = 6 * conv;
  const int64_t stage = conv / 2 + 16 * 16 * 16 * 32 + 5 * conv;  // strided, projection, rest
  EXPECT_EQ(backbone_forward_macs(o), stem + stage1 + 2 * stage + 640);
}

TEST(BackboneMacs, CountsBagNet11ByHand) {
  BackboneOptions o;
  o.name = "bagnet11";
  o.in_channels = 1;
  o.input = 32;
  o.num_classes = 10;
  const int64_t stem = 32 * 32 * 1 * 32 * 9;
  const int64_t one = 32 * 32 * 32 * 32;  // a 1x1 conv of equal width; each stage halves
  // side and doubles width: the same count. Its first block: a 3x3 conv (9 ones, half of
  // it when strided and widening), then 1x1; the projection of a widening stage: half.
  const int64_t stage1 = 9 * one + 3 * one;
  const int64_t stage = 9 * one / 2 + one + one / 2 + 2 * one;
  EXPECT_EQ(backbone_forward_macs(o), stem + stage1 + 2 * stage + 128 * 10);
}

// A bounded receptive field: changing the top-left corner moves the pooled features by
// the same amount whatever the far bottom-right corner holds, since no output position
// sees both (11 pixels at most, the corners 20 apart). In double precision the two
// differences agree to rounding; resnet20, whose positions see the whole patch, fails it.
// That rounding is the pooling's alone: a local feature that sees one corner only is
// computed from the same inputs by the same code (LibTorch's float64 convolutions, whose
// order depends on shapes, not values) in both images, so it is bitwise the same.
TEST_F(BackboneTest, BagNetFeaturesAreAveragesOfLocalFeatures) {
  auto gap = [](const std::string& name) {
    auto net = make_backbone(options(name, 1, 32));
    net->to(torch::kDouble);
    net->eval();
    torch::NoGradGuard no_grad;
    at::Tensor a = torch::randn({1, 1, 32, 32}, torch::kDouble);
    at::Tensor b = a.clone();
    b.narrow(2, 0, 4).narrow(3, 0, 4).normal_();
    at::Tensor far = torch::randn({1, 1, 8, 8}, torch::kDouble);
    at::Tensor c = a.clone(), d = b.clone();
    c.narrow(2, 24, 8).narrow(3, 24, 8).copy_(far);
    d.narrow(2, 24, 8).narrow(3, 24, 8).copy_(far);
    at::Tensor fa = net->features(a), fb = net->features(b);
    at::Tensor fc = net->features(c), fd = net->features(d);
    at::Tensor near = fa - fb;
    at::Tensor moved = fc - fd;
    const double size = torch::stack({fa, fb, fc, fd}).abs().max().item<double>();
    return std::make_tuple(
        (near - moved).abs().max().item<double>(), near.abs().max().item<double>(), size);
  };
  const auto [bagnet, bagnet_change, bagnet_size] = gap("bagnet11");
  // Not rounding: changing 16 pixels moves some feature by far more than any rounding.
  EXPECT_GT(bagnet_change, 1e-3);  // the corner matters
  // Each feature is the mean of 8 x 8 = 64 local features >= 0 (a ReLU's), so its float64
  // sum is within 63 u (u = 2^-53) of the feature itself: 4 x 64 u of the largest of the
  // four, plus u of it for each of the two differences.
  EXPECT_LE(bagnet, (4 * 64 + 4) * std::ldexp(bagnet_size, -53));
  // Not rounding: far corners interact through resnet20's layers by orders of magnitude
  // more than float64's roundings (~1e-14 here).
  EXPECT_GT(std::get<0>(gap("resnet20")), 1e-6);
}

TEST_F(BackboneTest, GrayInputsGiveTheSameLogitsAsPlainConvolutions) {
  // A one-channel stem runs LibTorch's direct kernel; the same network with three input
  // channels, the extra ones zero in the weights and the input, runs nn::Conv2d's path.
  // In double precision the two differ by rounding alone: each of resnet20's 20 layers sums
  // at most 9 x 64 = 576 products, within 576 u = 6.4e-14 (u = 2^-53) of their magnitudes,
  // 1.3e-12 over the network; 1e-10 leaves a factor 80 for magnitudes above the result.
  for (const std::string name : {"small-cnn", "resnet20"}) {
    auto gray = make_backbone(options(name, 1, 24));
    auto colour = make_backbone(options(name, 3, 24));
    gray->to(torch::kDouble);
    colour->to(torch::kDouble);
    gray->eval();
    colour->eval();
    torch::NoGradGuard no_grad;
    auto from = gray->named_parameters();
    for (auto& p : colour->named_parameters()) {
      const at::Tensor& g = from[p.key()];
      at::Tensor to = p.value().zero_();
      (to.sizes() == g.sizes() ? to : to.narrow(1, 0, 1)).copy_(g);  // the stem: channel 0
    }
    at::Tensor x = torch::randn({3, 1, 24, 24}, torch::kDouble);
    at::Tensor x3 = torch::cat({x, torch::zeros({3, 2, 24, 24}, torch::kDouble)}, 1);
    EXPECT_TRUE(torch::allclose(gray->forward(x), colour->forward(x3), 1e-10, 1e-10)) << name;
  }
}

// On either training kernels (models/kernels.h): oneDNN's blocked layout, where this
// processor has it, and LibTorch's.
TEST_F(BackboneTest, ResNet20LearnsAFixedBatch) {
  for (const CpuKernels kernels : {CpuKernels::kAuto, CpuKernels::kAten}) {
    set_cpu_kernels(kernels);
    auto net = make_backbone(options("resnet20", 1, 16));
    torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
    at::Tensor x = torch::randn({8, 1, 16, 16});
    at::Tensor y = torch::randint(0, 7, {8});
    net->train();
    const double first = torch::cross_entropy_loss(net->forward(x), y).item<double>();
    double last = first;
    for (int step = 0; step < 30; ++step) {
      adam.zero_grad();
      at::Tensor loss = torch::cross_entropy_loss(net->forward(x), y);
      loss.backward();
      adam.step();
      last = loss.item<double>();
    }
    // Not a rounding bound: 30 Adam steps memorise 8 samples, taking the loss from about
    // ln 7 = 1.9 towards 0; a quarter of the start leaves room for any kernels' rounding.
    EXPECT_LT(last, 0.25 * first) << cpu_kernels_name(kernels);
  }
  set_cpu_kernels(CpuKernels::kAuto);
}

}  // namespace
}  // namespace patchwise
