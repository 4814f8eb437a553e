#include "patchwise/model/model_file.h"

#include <gmock/gmock.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/models/registry.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

ModelConfig small_config() { return test::seed_config(); }

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

/// Replaces the checksum trailer of a model file's bytes with one that matches them,
/// so that a test can change the content and reach the checks after the checksum.
std::string reseal(std::string bytes) {
  bytes.resize(bytes.size() - 8);
  const auto sum = static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
  bytes += kChecksumTag;
  for (int i = 0; i < 4; ++i) bytes.push_back(char(uint8_t(sum >> (8 * i))));
  return bytes;
}

/// A model file of `config`'s JSON and hand-made tensor `records` (count included).
std::string build_file(const ModelConfig& config, const std::string& records) {
  const std::string json = model_config_to_json(config).dump();
  std::string bytes(kModelMagic, 8);
  for (int i = 0; i < 8; ++i) bytes.push_back(char(uint8_t(json.size() >> (8 * i))));
  return reseal(bytes + json + records + "PWCK0000");
}

/// One tensor record: name, type code, sizes, then `data` as its elements.
std::string record(
    const std::string& name, uint8_t type, const std::vector<uint64_t>& sizes,
    const std::string& data) {
  std::string r = {char(name.size()), char(name.size() >> 8)};
  r += name;
  r.push_back(char(type));
  r.push_back(char(sizes.size()));
  for (uint64_t size : sizes) {
    for (int i = 0; i < 8; ++i) r.push_back(char(uint8_t(size >> (8 * i))));
  }
  return r + data;
}

std::string count(uint32_t n) { return {char(n), char(n >> 8), char(n >> 16), char(n >> 24)}; }

class ModelFileTest : public test::SeededTest {};

TEST_F(ModelFileTest, RoundTripGivesIdenticalPredictionsAndConfiguration) {
  ModelConfig config = small_config();
  config.fusion = FusionRule::kGMean;
  config.backbone.batch_norm = true;
  PatchClassifier model(config);
  // Make batch-norm running statistics non-trivial so buffers are checked too.
  model->train();
  model->forward(torch::randint(0, 256, {8, 1, 28, 28}, torch::kUInt8));
  model->eval();
  save_model(path("m.pw"), model, nlohmann::json{{"note", "x"}});

  PatchClassifier loaded = load_model(path("m.pw"));
  at::Tensor images = torch::randint(0, 256, {5, 1, 28, 28}, torch::kUInt8);
  PatchOutput a = model->forward(images);
  PatchOutput b = loaded->forward(images);
  EXPECT_TRUE(torch::equal(a.log_probs, b.log_probs));
  EXPECT_TRUE(torch::equal(a.patch_logits, b.patch_logits));
  EXPECT_EQ(model_config_to_json(loaded->config()), model_config_to_json(model->config()));
  EXPECT_EQ(load_model_training(path("m.pw"))["note"], "x");
}

TEST_F(ModelFileTest, EveryRegisteredBackboneSavesLoadsAndPredictsTheSame) {
  at::Tensor images = torch::randint(0, 256, {3, 1, 28, 28}, torch::kUInt8);
  for (const BackboneInfo& info : backbones()) {
    ModelConfig config = small_config();
    config.backbone.name = info.name;
    config.backbone.input = std::max<int64_t>(info.min_input, 24);
    PatchClassifier model(config);
    model->train();  // running statistics of the batch norms, where there are any
    model->forward(torch::randint(0, 256, {4, 1, 28, 28}, torch::kUInt8));
    model->eval();
    save_model(path("m.pw"), model, nullptr);
    PatchClassifier loaded = load_model(path("m.pw"));
    EXPECT_TRUE(torch::equal(model->forward(images).log_probs, loaded->forward(images).log_probs))
        << info.name;
    EXPECT_EQ(loaded->config().backbone.name, info.name);
  }
}

TEST_F(ModelFileTest, EveryFusionRuleSavesLoadsAndPredictsTheSame) {
  at::Tensor images = torch::randint(0, 256, {4, 1, 28, 28}, torch::kUInt8);
  for (FusionRule rule : all_fusion_rules()) {
    ModelConfig config = small_config();
    config.fusion = rule;
    config.position_embedding = rule == FusionRule::kGatedAttention;
    config.attention_hidden = 16;
    PatchClassifier model(config);
    for (auto& p : model->parameters()) p.data().add_(0.01);  // not the initial values
    model->eval();
    save_model(path("m.pw"), model, nullptr);
    PatchClassifier loaded = load_model(path("m.pw"));
    PatchOutput a = model->forward(images);
    PatchOutput b = loaded->forward(images);
    EXPECT_TRUE(torch::equal(a.log_probs, b.log_probs)) << fusion_rule_name(rule);
    EXPECT_EQ(loaded->config().fusion, rule);
    EXPECT_EQ(a.attention.defined(), fusion_rule_has_attention(rule));
    if (a.attention.defined()) {
      EXPECT_TRUE(torch::equal(a.attention, b.attention));
    }
  }
}

TEST_F(ModelFileTest, ATiledModelKeepsItsTilesAndAFileWithBadTilesIsRefused) {
  ModelConfig config = small_config();
  config.tiled = true;
  config.grid.rows = config.grid.cols = 1;
  config.grid.patch_h = config.grid.patch_w = config.grid.input = config.image_h = config.image_w =
      32;
  config.tiles.tile = 50;
  config.tiles.min_foreground = 0.05;
  PatchClassifier model(config);
  save_model(path("m.pw"), model, nullptr);
  const ModelConfig loaded = load_model(path("m.pw"))->config();
  EXPECT_TRUE(loaded.tiled);
  EXPECT_EQ(loaded.tiles.tile, 50);
  EXPECT_DOUBLE_EQ(loaded.tiles.min_foreground, 0.05);
  EXPECT_FALSE(model_config_from_json(model_config_to_json(small_config()), "x").tiled);

  nlohmann::json bad = model_config_to_json(config);
  bad["tiles"]["min_foreground"] = 2.5;
  const std::string message = test::input_error([&] { model_config_from_json(bad, "m.pw"); });
  EXPECT_THAT(message, ::testing::HasSubstr("m.pw: min_foreground"));
  EXPECT_THAT(message, ::testing::HasSubstr("2.5"));
}

TEST_F(ModelFileTest, ALearnedRuleCannotBeSwappedIntoAnotherModel) {
  PatchClassifier model(small_config());
  EXPECT_THROW(model->set_fusion(FusionRule::kAttention), InputError);
  model->set_fusion(FusionRule::kMax);
  at::Tensor images = torch::randint(0, 256, {2, 1, 28, 28}, torch::kUInt8);
  PatchOutput out = model->forward(images);
  EXPECT_TRUE(torch::equal(out.log_probs, fuse(FusionRule::kMax, out.patch_logits)));
}

TEST_F(ModelFileTest, AWarmStartTakesEveryWeightAndRefusesAnotherModel) {
  ModelConfig config = small_config();
  config.fusion = FusionRule::kGatedAttention;
  config.normalization = {{0.25}, {0.5}};
  PatchClassifier saved(config);
  save_model(path("m.pw"), saved, nlohmann::json());
  ModelConfig fresh = config;
  fresh.normalization = {{0.1}, {0.2}};  // the file's normalization wins
  torch::manual_seed(123);
  PatchClassifier model(fresh);
  load_model_weights(model, path("m.pw"));
  const auto want = saved->named_parameters();
  for (const auto& p : model->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), want[p.key()])) << p.key();
  }
  EXPECT_TRUE(torch::equal(model->buffers()[0], saved->buffers()[0]));
  ModelConfig other = config;
  other.fusion = FusionRule::kMean;  // no attention weights to take
  PatchClassifier mean_model(other);
  EXPECT_THAT(
      test::input_error([&] { load_model_weights(mean_model, path("m.pw")); }),
      ::testing::HasSubstr("m.pw: unexpected weight 'attention."));
  other = config;
  other.attention_hidden = 64;
  PatchClassifier narrow(other);
  EXPECT_THAT(
      test::input_error([&] { load_model_weights(narrow, path("m.pw")); }),
      ::testing::HasSubstr("has shape 128x64, expected 64x64"));
}

TEST_F(ModelFileTest, RefusesAFileOfAnotherFormat) {
  write_text(path("m.pw"), "this is not a model at all");
  EXPECT_THAT(
      [&] { load_model(path("m.pw")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("not a patchwise model file")));
}

TEST_F(ModelFileTest, RefusesAnotherFormatVersionNamingBoth) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  std::string text = test::read_file(path("m.pw"));
  const std::string from = "\"format_version\":2";
  const size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos);
  text.replace(at, from.size(), "\"format_version\":7");
  write_text(path("m.pw"), reseal(text));
  EXPECT_THAT(
      [&] { load_model(path("m.pw")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("format version 7, expected 2")));
}

TEST_F(ModelFileTest, ABadValueInTheFileIsReportedAgainstTheFileNotAFlag) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  std::string text = test::read_file(path("m.pw"));
  const std::string from = "\"name\":\"small-cnn\"";
  const size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos);
  text.replace(at, from.size(), "\"name\":\"resnet-20\"");
  write_text(path("m.pw"), reseal(text));
  const std::string message = test::input_error([&] { load_model(path("m.pw")); });
  EXPECT_THAT(message, HasSubstr("m.pw: backbone: unknown backbone 'resnet-20'"));
  EXPECT_THAT(message, ::testing::Not(HasSubstr("--")));
}

// Sizes in a file with a valid checksum are bounded before anything is allocated: an input
// of 100000 (tens of GB of activations a tile) and an image of 2^31 rows.
TEST_F(ModelFileTest, SizesBeyondTheirBoundsAreRefusedBeforeAllocating) {
  ModelConfig big_input = small_config();
  big_input.grid.input = big_input.backbone.input = 100000;
  write_text(path("input.pw"), build_file(big_input, count(0)));
  EXPECT_THAT(
      test::input_error([&] { load_model(path("input.pw")); }),
      HasSubstr("input.pw: input: 100000, expected at most 1024"));
  ModelConfig tall = small_config();
  tall.image_h = int64_t{1} << 31;
  write_text(path("tall.pw"), build_file(tall, count(0)));
  EXPECT_THAT(
      test::input_error([&] { load_model(path("tall.pw")); }),
      HasSubstr("tall.pw: image size 2147483648x28, expected sides of at most 65536"));
}

TEST_F(ModelFileTest, AFlippedByteAnywhereIsRefused) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  const std::string good = test::read_file(path("m.pw"));
  // The magic is checked by itself; every later region is covered by the checksum:
  // the length, the configuration, the weights (start, middle, end) and the trailer.
  for (size_t at :
       {size_t(9),
        size_t(30),
        good.size() / 2,
        good.size() - 20,
        good.size() - 6,
        good.size() - 1}) {
    std::string bad = good;
    bad[at] = char(bad[at] ^ 0x10);
    write_text(path("bad.pw"), bad);
    EXPECT_THAT(
        [&] { load_model(path("bad.pw")); },
        ::testing::ThrowsMessage<InputError>(
            ::testing::AnyOf(HasSubstr("checksum mismatch"), HasSubstr("no checksum"))))
        << "byte " << at;
  }
}

TEST_F(ModelFileTest, AVersionOneFileIsRefusedNamingTheVersion) {
  nlohmann::json j = model_config_to_json(small_config());
  j["format_version"] = 1;
  const std::string json = j.dump();
  std::string bytes(kModelMagic, 8);
  for (int i = 0; i < 8; ++i) bytes.push_back(char(uint8_t(json.size() >> (8 * i))));
  write_text(path("v1.pw"), bytes + json + "PK\x03\x04 a LibTorch archive");
  EXPECT_THAT(
      [&] { load_model(path("v1.pw")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("format version 1")));
}

TEST_F(ModelFileTest, DeclaredSizesBeyondTheFileAreRefusedBeforeAllocating) {
  const ModelConfig config = small_config();
  struct Case {
    std::string records;
    std::string message;
  };
  const std::vector<Case> cases = {
      {count(1) + record("model/backbone.fc2.bias", 1, {uint64_t(1) << 40}, "abcd"),
       "declares more elements than the file's"},
      {count(1) + record("model/x", 1, {uint64_t(1) << 62, uint64_t(1) << 62}, ""),
       "declares more elements than the file's"},
      {count(0x7fffffff), "2147483647 tensor records declared"},
      {count(1) + record("model/x", 9, {1}, "abcd"), "type code 9"},
      {count(1) + record("model/x", 1, std::vector<uint64_t>(9, 1), "abcd"), "9 dimensions"},
      {count(1) + record("model/x", 1, {2}, "abcd"), "declares more elements"},
      {count(1) + std::string("\x10\x00", 2) + "ab", "truncated tensor records (a name"},
      {count(1) + record("model/x", 1, {1}, "abcd") + "z", "1 bytes after the last"},
      {count(2) + record("state/x", 4, {1}, "a") + record("state/x", 4, {1}, "a"),
       "'state/x' stored twice"},
  };
  for (const Case& c : cases) {
    write_text(path("m.pw"), build_file(config, c.records));
    EXPECT_THAT(
        [&] { load_model(path("m.pw")); },
        ::testing::ThrowsMessage<InputError>(HasSubstr(c.message)))
        << c.message;
  }
}

TEST_F(ModelFileTest, MissingUnexpectedAndMistypedWeightsAreRefused) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  PatchClassifier loaded = load_model(path("m.pw"));  // the real thing loads
  const ModelConfig config = small_config();
  write_text(path("m.pw"), build_file(config, count(0)));
  EXPECT_THAT(
      [&] { load_model(path("m.pw")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("weights lack 'backbone.")));
  write_text(path("m.pw"), build_file(config, count(1) + record("model/extra", 4, {1}, "a")));
  EXPECT_THAT(
      [&] { load_model(path("m.pw")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("unexpected weight 'extra'")));
}

TEST_F(ModelFileTest, StateTensorsRoundTripNextToTheWeights) {
  PatchClassifier model(small_config());
  TensorMap state;
  state["rng"] = torch::randint(0, 256, {17}, torch::kUInt8);
  state["step"] = torch::tensor(int64_t(12345678901));
  state["moment"] = torch::randn({3, 4}, torch::kFloat64);
  save_model(path("m.pw"), model, nullptr, state);
  const TensorMap back = load_model_state(path("m.pw"));
  ASSERT_EQ(back.size(), 3u);
  for (const auto& [key, tensor] : state) {
    EXPECT_TRUE(torch::equal(back.at(key), tensor)) << key;
  }
  EXPECT_TRUE(load_model_state(path("m.pw")).size() == 3u);
  save_model(path("plain.pw"), model, nullptr);
  EXPECT_TRUE(load_model_state(path("plain.pw")).empty());
}

TEST_F(ModelFileTest, AWeightOfAnotherShapeIsRefusedNamingIt) {
  ModelConfig config = small_config();
  PatchClassifier model(config);
  save_model(path("m.pw"), model, nullptr);
  config.class_names.push_back("d");  // a head of 4 classes cannot take the stored 3
  config.backbone.num_classes = 4;
  PatchClassifier other(config);
  std::string text = test::read_file(path("m.pw"));
  // Same weights, configuration of the 4-class model.
  const std::string json = model_config_to_json(other->config()).dump();
  uint64_t old_length = 0;
  for (int i = 0; i < 8; ++i) old_length |= uint64_t(uint8_t(text[8 + i])) << (8 * i);
  std::string rebuilt = std::string(kModelMagic, 8);
  for (int i = 0; i < 8; ++i) rebuilt.push_back(char(uint8_t(json.size() >> (8 * i))));
  rebuilt += json + text.substr(16 + old_length);
  write_text(path("m.pw"), reseal(rebuilt));
  EXPECT_THAT(
      [&] { load_model(path("m.pw")); },
      ::testing::ThrowsMessage<InputError>(
          HasSubstr("weight 'backbone.fc2.weight' has shape 3x64, expected 4x64")));
}

// A NaN weight in a file with a valid checksum (saved so, not corrupted) would predict
// NaN probabilities with exit 0: it is refused on load, naming the weight.
TEST_F(ModelFileTest, ANonFiniteWeightIsRefusedNamingIt) {
  PatchClassifier model(small_config());
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["backbone.fc1.bias"][1] = std::nan("");
  }
  save_model(path("m.pw"), model, nullptr);
  EXPECT_THAT(
      [&] { load_model(path("m.pw")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr(
          "weight 'backbone.fc1.bias' holds values that are not finite (NaN or infinite)")));
}

TEST_F(ModelFileTest, RefusesTruncatedWeights) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  std::string text = test::read_file(path("m.pw"));
  write_text(path("m.pw"), text.substr(0, text.size() - 500));
  EXPECT_THAT(
      [&] { load_model(path("m.pw")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("truncated or corrupt")));
  // Past the checksum (resealed), the records themselves are found wanting.
  write_text(path("m.pw"), reseal(text.substr(0, text.size() - 500)));
  EXPECT_THAT(
      [&] { load_model(path("m.pw")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("declares more elements")));
}

TEST_F(ModelFileTest, RefusesATruncatedConfiguration) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  write_text(path("m.pw"), test::read_file(path("m.pw")).substr(0, 40));
  EXPECT_THROW(load_model(path("m.pw")), InputError);
}

TEST_F(ModelFileTest, RefusesAMissingFileAndADirectory) {
  EXPECT_THAT(
      [&] { load_model(path("none.pw")); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("no such model file")));
  EXPECT_THAT(
      [&] { load_model(dir_.string()); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("directory")));
}

TEST_F(ModelFileTest, SavingIntoAMissingFolderFailsCleanly) {
  PatchClassifier model(small_config());
  EXPECT_THAT(
      [&] { save_model(path("no/such/dir/m.pw"), model, nullptr); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("does not exist")));
}

TEST_F(ModelFileTest, AFailedWriteLeavesTheExistingFileIntactAndNoTemporary) {
  write_text(path("out"), "precious");
  EXPECT_THROW(
      write_file_atomically(
          path("out"),
          "--out",
          [](std::ostream& out) {
            out << "half";
            throw InputError("disk on fire");
          }),
      InputError);
  EXPECT_EQ(test::read_file(path("out")), "precious");
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST_F(ModelFileTest, ConfigurationJsonRefusesMissingFields) {
  nlohmann::json j = model_config_to_json(small_config());
  j.erase("grid");
  EXPECT_THAT(
      [&] { model_config_from_json(j, "x.pw"); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("lacks 'grid'")));
}

}  // namespace
}  // namespace patchwise
