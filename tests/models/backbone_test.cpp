#include "patchwise/models/backbone.h"

#include <gmock/gmock.h>

#include "patchwise/core/error.h"
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
  EXPECT_FALSE(torch::allclose(net->forward(x), net->forward(x)));
  net->eval();
  EXPECT_TRUE(torch::equal(net->forward(x), net->forward(x)));
}

TEST_F(BackboneTest, RefusesUnknownNamesChannelsAndTooSmallInputs) {
  EXPECT_THAT([] { make_backbone(options("resnet", 1, 32)); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("unknown backbone 'resnet'")));
  EXPECT_THAT([] { make_backbone(options("small-cnn", 2, 32)); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("expected 1 or 3")));
  EXPECT_THAT([] { make_backbone(options("small-cnn", 1, 16)); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("at least 22")));
  EXPECT_THAT([] { make_backbone(options("vgg16", 1, 28)); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("at least 32")));
}

TEST(BackboneMacs, CountsTheSmallCnnByHand) {
  // conv1 30*30*16*1*9 + conv2 13*13*32*16*9 + conv3 4*4*64*32*9 + fc 256*64 + fc 64*10
  BackboneOptions o;
  o.num_classes = 10;
  EXPECT_EQ(backbone_forward_macs(o), 129600 + 778752 + 294912 + 16384 + 640);
}

}  // namespace
}  // namespace patchwise
