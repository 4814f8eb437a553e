// Export to PyTorch, checked in Python: Debian's python3-torch loads the state dict into
// scripts/patchwise_torch.py's modules and must give the same outputs on the same images.
#include "patchwise/model/torch_export.h"

#include <gmock/gmock.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <cstdlib>
#include <fstream>

#include "patchwise/model/model_file.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

class TorchExportTest : public test::SeededTest {
 protected:
  /// A model of `config` with non-trivial weights and batch-norm statistics, in evaluation.
  static PatchClassifier trained_looking(const ModelConfig& config) {
    PatchClassifier model(config);
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.add_(torch::randn_like(p) * 0.05);
    model->train();
    model->forward(torch::randint(
        0, 256, {6, config.image_channels, config.image_h, config.image_w}, torch::kUInt8));
    model->eval();
    return model;
  }

  /// Exports `model`, saves its outputs on random images beside it, and runs the
  /// Python check; returns its exit status and output. The bound is the script's: every
  /// log-probability and patch logit within 1e-5 absolute. Both sides are float32 passes
  /// (u = 2^-24) of one network, here by LibTorch's kernels (a forward with gradients skips
  /// the blocked path), there by Python's torch: sums of up to 4,608 products whose roundings
  /// differ only where the two libraries order them differently, about sqrt(K) u of the
  /// activations per layer (see torch_import_test.cpp's expect_python_outputs).
  std::pair<int, std::string> check_in_python(PatchClassifier& model) {
    const ModelConfig& c = model->config();
    export_model(model, path("model.pt"), path("model.json"));
    at::Tensor images =
        torch::randint(0, 256, {3, c.image_channels, c.image_h, c.image_w}, torch::kUInt8);
    PatchOutput out = model->forward(images);
    c10::Dict<std::string, at::Tensor> expected;
    expected.insert("images", images);
    expected.insert("log_probs", out.log_probs.detach());
    expected.insert("patch_logits", out.patch_logits.detach());
    const std::vector<char> bytes = torch::jit::pickle_save(expected);
    std::ofstream(path("expected.pt"), std::ios::binary).write(bytes.data(), bytes.size());
    const std::string command = std::string(PATCHWISE_PYTHON) + " " + PATCHWISE_SOURCE_DIR +
                                "/scripts/patchwise_torch.py " + path("model.pt") + " " +
                                path("expected.pt") + " > " + path("python.log") + " 2>&1";
    const int status = std::system(command.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::read_file(path("python.log"))};
  }
};

using test::gray_config;

TEST_F(TorchExportTest, SmallCnnWithBatchNormAndResizedPatchesAgreesInPython) {
  ModelConfig c = gray_config("small-cnn", FusionRule::kMean);
  c.backbone.batch_norm = true;
  c.grid.input = 24;  // 18 -> 24: the bilinear resize is part of the check
  PatchClassifier model = trained_looking(c);
  auto [code, log] = check_in_python(model);
  EXPECT_EQ(code, 0) << log;
  EXPECT_THAT(log, HasSubstr("log_probs: max |difference|"));
}

TEST_F(TorchExportTest, ResNet20WithGatedAttentionOverMirroredCropsAgreesInPython) {
  ModelConfig c = gray_config("resnet20", FusionRule::kGatedAttention);
  c.position_embedding = true;
  c.grid.layout = PatchLayout::kTenCrop;  // five crops and their mirrors
  c.grid.patch_h = c.grid.patch_w = c.grid.input = 20;
  PatchClassifier model = trained_looking(c);
  auto [code, log] = check_in_python(model);
  EXPECT_EQ(code, 0) << log;
}

TEST_F(TorchExportTest, BagNetWithItsOneByOneConvolutionsAgreesInPython) {
  PatchClassifier model = trained_looking(gray_config("bagnet11", FusionRule::kGMean));
  auto [code, log] = check_in_python(model);
  EXPECT_EQ(code, 0) << log;
}

TEST_F(TorchExportTest, ResNet20WithConcatFusionAgreesInPython) {
  ModelConfig c = gray_config("resnet20", FusionRule::kConcat);
  c.grid.input = 18;  // the Fashion-MNIST recipe's patches, not resized
  PatchClassifier model = trained_looking(c);
  auto [code, log] = check_in_python(model);
  EXPECT_EQ(code, 0) << log;
}

TEST_F(TorchExportTest, ColourVgg16WithEveryFixedRuleAgreesInPython) {
  ModelConfig c = gray_config("vgg16", FusionRule::kGMean);
  c.image_channels = 3;
  c.normalization = {{0.5, 0.4, 0.3}, {0.2, 0.25, 0.3}};
  PatchClassifier model = trained_looking(c);
  for (FusionRule rule : fixed_fusion_rules()) {
    model->set_fusion(rule);
    auto [code, log] = check_in_python(model);
    EXPECT_EQ(code, 0) << fusion_rule_name(rule) << "\n" << log;
  }
}

TEST_F(TorchExportTest, WeightsOfAnotherNetworkAreRefusedInPython) {
  // The Python side can fail: a configuration that builds another network does not
  // take these weights (load_state_dict is strict).
  PatchClassifier model = trained_looking(gray_config("small-cnn", FusionRule::kMean));
  export_model(model, path("model.pt"), path("model.json"));
  nlohmann::json config = export_config(model);
  config["backbone"]["name"] = "resnet20";
  std::ofstream(path("model.json")) << config.dump();
  const std::string command = std::string(PATCHWISE_PYTHON) + " -c \"import sys; " +
                              "sys.path.insert(0, '" + PATCHWISE_SOURCE_DIR + "/scripts'); " +
                              "import patchwise_torch; patchwise_torch.load('" + path("model.pt") +
                              "')\" > " + path("refused.log") + " 2>&1";
  EXPECT_NE(std::system(command.c_str()), 0);
  EXPECT_THAT(test::read_file(path("refused.log")), HasSubstr("Missing key(s) in state_dict"));
}

TEST_F(TorchExportTest, TheConfigurationNamesEveryTensorWithItsShape) {
  PatchClassifier model = trained_looking(gray_config("resnet20", FusionRule::kAttention));
  nlohmann::json j = export_config(model);
  EXPECT_EQ(j["format"], "patchwise-torch-export");
  EXPECT_EQ(j["patches"].size(), 4u);
  EXPECT_EQ(j["state_dict"]["backbone.conv1.weight"], (std::vector<int64_t>{16, 1, 3, 3}));
  EXPECT_EQ(
      j["state_dict"]["backbone.layer2.0.downsample.1.running_var"], (std::vector<int64_t>{32}));
  EXPECT_EQ(j["state_dict"]["mean"], (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_TRUE(j["state_dict"].contains("attention.V"));
}

}  // namespace
}  // namespace patchwise
