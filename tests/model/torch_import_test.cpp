// Import from PyTorch, checked against Python: Debian's python3-torch builds the model of an
// exported configuration in scripts/patchwise_torch.py, torch.save's its random weights and
// its outputs on random images; patchwise reads both and must give the same outputs.
// Hand-made archives check the refusals: no code in a file ever runs.
#include "patchwise/model/torch_import.h"

#include <gmock/gmock.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>

#include "patchwise/model/model_file.h"
#include "patchwise/model/torch_export.h"
#include "patchwise/models/backbone.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using namespace std::string_literals;  // pickles hold NUL bytes

std::string le(uint64_t value, size_t width) {
  std::string out;
  for (size_t i = 0; i < width; ++i) out.push_back(char(uint8_t(value >> (8 * i))));
  return out;
}

/// Protocol-2 pickle pieces, as torch.save writes them.
std::string unicode(const std::string& s) { return "X" + le(s.size(), 4) + s; }
std::string small_int(int v) { return "K" + le(v, 1); }

/// {name: tensor of `size` elements (stride 1) over storage '0', a FloatStorage of `numel`}.
std::string tensor_pickle(const std::string& name, int size, int numel) {
  return "\x80\x02}(" + unicode(name) + "ctorch._utils\n_rebuild_tensor_v2\n((" +
         unicode("storage") + "ctorch\nFloatStorage\n" + unicode("0") + unicode("cpu") +
         small_int(numel) + "tQ" + small_int(0) + small_int(size) + "\x85" + small_int(1) +
         "\x85\x89)tRu.";
}

/// An archive of `pickle` and one record '0' of `record` bytes.
std::string archive(const std::string& pickle, size_t record = 16) {
  return stored_zip({{"w/data.pkl", pickle}, {"w/data/0", std::string(record, '\0')}});
}

using test::gray_config;

ModelConfig colour_vgg() {
  ModelConfig c = gray_config("vgg16", FusionRule::kGMean);
  c.image_channels = 3;
  c.backbone.batch_norm = true;
  c.normalization = {{0.5, 0.4, 0.3}, {0.2, 0.25, 0.3}};
  return c;
}

class TorchImportTest : public test::SeededTest {
 protected:
  std::string python() const {
    return std::string(PATCHWISE_PYTHON) + " " + PATCHWISE_SOURCE_DIR +
           "/scripts/patchwise_torch.py";
  }

  /// Runs `command` (output to python.log) and expects it to succeed.
  void run_python(const std::string& command) {
    const int status = std::system((command + " > " + path("python.log") + " 2>&1").c_str());
    ASSERT_EQ(status, 0) << command << "\n" << test::read_file(path("python.log"));
  }

  /// Python makes `name` (its weights in `style`) and outputs.pt for the model of `config`.
  void make_in_python(
      const ModelConfig& config, const std::string& name, const std::string& style) {
    PatchClassifier model(config);
    std::ofstream(path("config.json")) << export_config(model).dump();
    run_python(
        python() + " --make " + path("config.json") + " " + path(name) + " " + path("outputs.pt") +
        " " + style);
  }

  /// The model's outputs on Python's images agree with Python's within 1e-5: two float32
  /// passes (u = 2^-24) of one network whose sums, of up to 9 x 512 = 4,608 products
  /// (vgg16), go in other orders; Winograd, where it serves, multiplies a layer's by 8.
  /// The script's weights (randn * 0.3 / sqrt(fan_in), biases 0.1) keep activations near
  /// 0.15, partial sums near 0.05, so a sum rounds by about sqrt(K) u * 0.05 = 2e-7 (the
  /// size of random roundings, not the worst case K u), 1.6e-6 under Winograd, and each
  /// layer passes on about 0.3 of what it inherits: a few 1e-6 at the outputs.
  void expect_python_outputs(PatchClassifier& model) {
    const TensorMap expected = read_torch_state_dict(path("outputs.pt"));
    model->eval();
    torch::NoGradGuard no_grad;
    const PatchOutput out = model->forward(expected.at("images"));
    EXPECT_LE((out.log_probs - expected.at("log_probs")).abs().max().item<double>(), 1e-5);
    EXPECT_LE((out.patch_logits - expected.at("patch_logits")).abs().max().item<double>(), 1e-5);
  }

  /// Python's weights in `style` for `config`, imported into a new model.
  PatchClassifier imported(const ModelConfig& config, const std::string& style) {
    make_in_python(config, "w.pt", style);
    PatchClassifier model(config);
    import_torch_weights(model, read_torch_state_dict(path("w.pt")), path("w.pt"), false);
    return model;
  }

  std::string refusal(const std::string& bytes) {
    std::ofstream(path("w.pt"), std::ios::binary) << bytes;
    return test::input_error([&] { read_torch_state_dict(path("w.pt")); });
  }
};

TEST_F(TorchImportTest, SmallCnnWithBatchNormAndResizedPatchesAgreesWithPython) {
  ModelConfig c = gray_config("small-cnn", FusionRule::kMean);
  c.backbone.batch_norm = true;
  c.grid.input = 24;
  PatchClassifier model = imported(c, "model");
  expect_python_outputs(model);
}

TEST_F(TorchImportTest, ColourVgg16WithBatchNormAgreesWithPython) {
  PatchClassifier model = imported(colour_vgg(), "model");
  expect_python_outputs(model);
}

TEST_F(TorchImportTest, ResNet20WithGatedAttentionAgreesWithPython) {
  ModelConfig c = gray_config("resnet20", FusionRule::kGatedAttention);
  c.position_embedding = true;
  c.grid.layout = PatchLayout::kTenCrop;
  c.grid.patch_h = c.grid.patch_w = c.grid.input = 20;
  PatchClassifier model = imported(c, "model");
  expect_python_outputs(model);
}

TEST_F(TorchImportTest, ResNet20WithConcatFusionAgreesWithPython) {
  ModelConfig c = gray_config("resnet20", FusionRule::kConcat);
  c.grid.input = 18;  // the Fashion-MNIST recipe's patches, not resized
  PatchClassifier model = imported(c, "model");
  expect_python_outputs(model);
}

TEST_F(TorchImportTest, BackboneOnlyNamesAsTorchvisionResNetAgreeWithPython) {
  PatchClassifier model = imported(gray_config("resnet20", FusionRule::kMean), "backbone");
  expect_python_outputs(model);
  EXPECT_TRUE(read_torch_state_dict(path("w.pt")).count("layer1.0.conv1.weight"));
}

TEST_F(TorchImportTest, ACheckpointWrappingTheStateDictIsUnwrapped) {
  PatchClassifier model = imported(gray_config("small-cnn", FusionRule::kMax), "checkpoint");
  expect_python_outputs(model);
}

TEST_F(TorchImportTest, TorchvisionVggTakesItsFeaturesAndKeepsTheNewHead) {
  const ModelConfig c = colour_vgg();
  make_in_python(c, "tv.pt", "torchvision");
  make_in_python(c, "full.pt", "model");  // the same seed: the same weights
  const TensorMap tv = read_torch_state_dict(path("tv.pt"));
  PatchClassifier model(c), full(c);
  const at::Tensor head = model->backbone().classifier_parameters()[0].clone();
  import_torch_weights(model, tv, path("tv.pt"), /*keep_head=*/true);
  import_torch_weights(full, read_torch_state_dict(path("full.pt")), "full.pt", false);
  const auto ours = named_state(model);
  const auto theirs = named_state(full);
  for (size_t i = 0; i < ours.size(); ++i) {  // imported tensors are copies: exact
    if (ours[i].first.rfind("backbone.conv.", 0) == 0) {
      EXPECT_TRUE(ours[i].second.equal(theirs[i].second)) << ours[i].first;
    }
  }
  EXPECT_TRUE(model->backbone().classifier_parameters()[0].equal(head));
  EXPECT_THAT(
      test::input_error([&] { import_torch_weights(model, tv, "tv.pt", false); }),
      AllOf(
          HasSubstr("tv.pt: 6 tensors unknown to this model: 'classifier.0.bias'"),
          HasSubstr("and 3 more")));
}

TEST_F(TorchImportTest, OurOwnExportReadsBackExactly) {
  PatchClassifier model(gray_config("resnet20", FusionRule::kAttention));
  export_model(model, path("model.pt"), path("model.json"));
  PatchClassifier copy(gray_config("resnet20", FusionRule::kAttention));
  load_initial_weights(copy, path("model.pt"), false);
  const auto a = named_state(model);
  const auto b = named_state(copy);
  // Written and read as float32 bytes: exact.
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(a[i].second.equal(b[i].second)) << a[i].first;
}

// The heads that depend on the classes stay new: the backbone's classifier, and concat's.
TEST_F(TorchImportTest, KeepHeadStartsAnotherClassCountFromAModelFile) {
  for (FusionRule rule : {FusionRule::kMean, FusionRule::kConcat}) {
    ModelConfig ten = gray_config("small-cnn", rule);
    ten.class_names.resize(10, "x");
    ten.backbone.num_classes = 10;
    PatchClassifier source(gray_config("small-cnn", rule));
    save_model(path("m.pw"), source, nullptr);
    PatchClassifier model(ten);
    const at::Tensor head = model->backbone().classifier_parameters()[0].clone();
    const bool concat = rule == FusionRule::kConcat;
    const at::Tensor concat_head =
        concat ? model->named_parameters()["concat.weight"].clone() : at::Tensor();
    EXPECT_THAT(
        test::input_error([&] { load_initial_weights(model, path("m.pw"), false); }),
        HasSubstr("fc2.weight"));
    load_initial_weights(model, path("m.pw"), true);
    // Copies, kept or loaded: exact.
    EXPECT_TRUE(model->backbone().classifier_parameters()[0].equal(head));
    if (concat) {
      EXPECT_TRUE(model->named_parameters()["concat.weight"].equal(concat_head));
    }
    EXPECT_TRUE(named_state(model)[0].second.equal(named_state(source)[0].second));
  }
}

class TorchImportRefusalTest : public TorchImportTest {
 protected:
  void SetUp() override {
    TorchImportTest::SetUp();
    model_ = PatchClassifier(gray_config("small-cnn", FusionRule::kMean));
    for (const auto& [name, tensor] : named_state(model_)) state_[name] = tensor.clone();
  }
  std::string import_error(const TensorMap& state, bool keep_head = false) {
    return test::input_error([&] { import_torch_weights(model_, state, "w.pt", keep_head); });
  }
  PatchClassifier model_{nullptr};
  TensorMap state_;
};

TEST_F(TorchImportRefusalTest, AMissingTensorIsNamed) {
  state_.erase("backbone.fc2.bias");
  EXPECT_EQ(
      import_error(state_),
      "w.pt: 1 of the model's tensors missing: 'backbone.fc2.bias'; expected every parameter "
      "and buffer of the model");
  EXPECT_EQ(import_error(state_, true), "");  // the classifier is not needed then
}

TEST_F(TorchImportRefusalTest, AnUnknownTensorIsNamed) {
  state_["backbone.extra.weight"] = torch::zeros({2});
  EXPECT_THAT(
      import_error(state_),
      HasSubstr("w.pt: 1 tensors unknown to this model: 'backbone.extra.weight'"));
}

TEST_F(TorchImportRefusalTest, AWrongShapeNamesBothShapesAndNothingIsCopied) {
  state_["backbone.conv.0.weight"] = torch::zeros({16, 3, 3, 3});
  state_["backbone.fc1.bias"].fill_(7);
  EXPECT_EQ(
      import_error(state_),
      "w.pt: 'backbone.conv.0.weight' has shape [16, 3, 3, 3], expected [16, 1, 3, 3]");
  for (const auto& [name, tensor] : named_state(model_)) {
    EXPECT_FALSE(name == "backbone.fc1.bias" && tensor.eq(7).all().item<bool>());
  }
}

TEST_F(TorchImportRefusalTest, IntegersForFloatsAreRefusedAndDoublesConverted) {
  state_["backbone.fc2.bias"] = torch::zeros({4}, torch::kLong);
  EXPECT_EQ(import_error(state_), "w.pt: 'backbone.fc2.bias' holds Long values, expected Float");
  state_["backbone.fc2.bias"] = torch::full({4}, 0.25, torch::kDouble);
  EXPECT_EQ(import_error(state_), "");
}

TEST_F(TorchImportRefusalTest, ANonFiniteValueIsRefusedNamingTheTensor) {
  state_["backbone.fc1.bias"][2] = std::nan("");
  EXPECT_EQ(
      import_error(state_),
      "w.pt: tensor 'backbone.fc1.bias' holds values that are not finite (NaN or infinite), "
      "expected numbers");
  state_["backbone.fc1.bias"][2] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(import_error(state_), HasSubstr("not finite"));
}

TEST_F(TorchImportTest, AGlobalOtherThanATensorsIsNeverCalled) {
  const std::string marker = path("marker");
  run_python(
      std::string(PATCHWISE_PYTHON) +
      " -c \"import os, torch\nclass Evil:\n"
      " def __reduce__(self): return (os.system, ('touch " +
      marker +
      "',))\n"
      "torch.save({'w': Evil()}, '" +
      path("w.pt") + "')\"");
  EXPECT_EQ(
      test::input_error([&] { read_torch_state_dict(path("w.pt")); }),
      path("w.pt") +
          ": the pickle calls posix.system, expected only tensors "
          "(collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch.*Storage)");
  EXPECT_FALSE(std::filesystem::exists(marker));
  const std::string by_hand = "\x80\x02\x63os\nsystem\n" + unicode("touch " + marker) + "\x85R.";
  EXPECT_THAT(refusal(archive(by_hand)), HasSubstr("the pickle calls os.system"));
  EXPECT_FALSE(std::filesystem::exists(marker));
}

TEST_F(TorchImportTest, ACompressedEntryIsRefused) {
  make_in_python(gray_config("small-cnn", FusionRule::kMean), "w.pt", "model");
  run_python(
      std::string(PATCHWISE_PYTHON) + " -c \"import zipfile\nsrc = zipfile.ZipFile('" +
      path("w.pt") + "')\nwith zipfile.ZipFile('" + path("d.pt") +
      "', 'w', zipfile.ZIP_DEFLATED) as out:\n for n in src.namelist(): out.writestr(n, "
      "src.read(n))\"");
  EXPECT_EQ(
      test::input_error([&] { read_torch_state_dict(path("d.pt")); }),
      path("d.pt") +
          ": entry 'w/data.pkl' is deflate-compressed, expected stored (torch.save's format)");
}

TEST_F(TorchImportTest, TruncatedCorruptAndForeignFilesAreRefused) {
  make_in_python(gray_config("small-cnn", FusionRule::kMean), "w.pt", "model");
  const std::string good = test::read_file(path("w.pt"));
  EXPECT_THAT(
      refusal(good.substr(0, good.size() / 2)),
      HasSubstr(": truncated zip archive (no end record)"));
  std::string flipped = good;
  flipped[64 + 10] ^= 1;  // in the pickle, after its local header and torch's padding
  EXPECT_THAT(refusal(flipped), HasSubstr("fails its CRC-32: the file is corrupt"));
  EXPECT_EQ(
      refusal("just text"),
      path("w.pt") +
          ": not a PyTorch archive (no zip end record), expected a file written by torch.save");
  EXPECT_THAT(refusal(stored_zip({{"w/other", "x"}})), HasSubstr("0 '<folder>/data.pkl' entries"));
}

TEST_F(TorchImportTest, HandMadeArchivesStayWithinTheirBounds) {
  EXPECT_EQ(refusal(archive(tensor_pickle("w", 4, 4))), "");
  EXPECT_THAT(
      refusal(archive(tensor_pickle("w", 5, 4))),
      HasSubstr("a tensor of size [5] and stride [1] at offset 0 of a storage of 4 elements"));
  EXPECT_THAT(
      refusal(archive(tensor_pickle("w", 4, 5))),
      HasSubstr("storage '0' of 5 Float elements (20 bytes), but its record has 16 bytes"));
  // A FloatStorage's 16 bytes re-tagged as a HalfStorage of 4 elements: the type does not
  // match the data, which would be read as other numbers.
  std::string half = tensor_pickle("w", 4, 4);
  half.replace(half.find("FloatStorage"), 12, "HalfStorage");
  EXPECT_THAT(
      refusal(archive(half)),
      HasSubstr("storage '0' of 4 Half elements (8 bytes), but its record has 16 bytes: the type "
                "does not match the data"));
  EXPECT_THAT(
      refusal(archive(tensor_pickle("w", 4, 4).substr(0, 50))), HasSubstr("the pickle ends early"));
  std::string deep = "\x80\x02N";
  for (int i = 0; i < 40; ++i) deep += "\x85";
  EXPECT_THAT(refusal(archive(deep + ".")), HasSubstr("nests containers over 32 deep"));
  EXPECT_THAT(
      refusal(archive("\x80\x02]q\x00h\x00\x61."s)), HasSubstr("puts a container into itself"));
  EXPECT_THAT(
      refusal(archive("\x80\x02]q\x00]h\x00\x61\x61."s)), HasSubstr("APPEND on a finished list"));
}

}  // namespace
}  // namespace patchwise
