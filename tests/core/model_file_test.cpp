#include "patchwise/core/model_file.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>
#include <torch/script.h>
#include <zlib.h>

#include "patchwise/core/error.h"
#include "patchwise/core/files.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

ModelConfig small_config() {
  ModelConfig c;
  c.class_names = {"a", "b", "c"};
  c.backbone.num_classes = 3;
  c.normalization = {{0.3}, {0.2}};
  return c;
}

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
    EXPECT_EQ(a.attention.defined(), fusion_rule_is_learned(rule));
    if (a.attention.defined()) {
      EXPECT_TRUE(torch::equal(a.attention, b.attention));
    }
  }
}

TEST_F(ModelFileTest, ALearnedRuleCannotBeSwappedIntoAnotherModel) {
  PatchClassifier model(small_config());
  EXPECT_THROW(model->set_fusion(FusionRule::kAttention), InputError);
  model->set_fusion(FusionRule::kMax);
  at::Tensor images = torch::randint(0, 256, {2, 1, 28, 28}, torch::kUInt8);
  PatchOutput out = model->forward(images);
  EXPECT_TRUE(torch::equal(out.log_probs, fuse(FusionRule::kMax, out.patch_logits)));
}

TEST_F(ModelFileTest, RefusesAFileOfAnotherFormat) {
  write_text(path("m.pw"), "this is not a model at all");
  EXPECT_THAT([&] { load_model(path("m.pw")); },
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
  EXPECT_THAT([&] { load_model(path("m.pw")); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("format version 7, expected 1 to 2")));
}

TEST_F(ModelFileTest, AFlippedByteAnywhereIsRefused) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  const std::string good = test::read_file(path("m.pw"));
  // The magic is checked by itself; every later region is covered by the checksum:
  // the length, the configuration, the weights (start, middle, end) and the trailer.
  for (size_t at : {size_t(9), size_t(30), good.size() / 2, good.size() - 20, good.size() - 6,
                    good.size() - 1}) {
    std::string bad = good;
    bad[at] = char(bad[at] ^ 0x10);
    write_text(path("bad.pw"), bad);
    EXPECT_THAT([&] { load_model(path("bad.pw")); },
                ::testing::ThrowsMessage<InputError>(
                    ::testing::AnyOf(HasSubstr("checksum mismatch"), HasSubstr("no checksum"))))
        << "byte " << at;
  }
}

TEST_F(ModelFileTest, AVersionOneFileWithoutChecksumStillLoads) {
  PatchClassifier model(small_config());
  for (auto& p : model->parameters()) p.data().add_(0.01);
  model->eval();
  save_model(path("m.pw"), model, nullptr);
  std::string text = test::read_file(path("m.pw"));
  text.resize(text.size() - 8);  // version 1 had no trailer
  const size_t at = text.find("\"format_version\":2");
  ASSERT_NE(at, std::string::npos);
  text[at + std::string("\"format_version\":").size()] = '1';
  write_text(path("v1.pw"), text);
  PatchClassifier loaded = load_model(path("v1.pw"));
  at::Tensor images = torch::randint(0, 256, {3, 1, 28, 28}, torch::kUInt8);
  EXPECT_TRUE(torch::equal(loaded->forward(images).log_probs, model->forward(images).log_probs));
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
  EXPECT_THAT([&] { load_model(path("m.pw")); },
              ::testing::ThrowsMessage<InputError>(
                  HasSubstr("weight 'backbone.fc2.weight' has shape 3x64, expected 4x64")));
}

TEST_F(ModelFileTest, ATensorDeclaringMoreThanItStoresIsRefusedBeforeCopying) {
  PatchClassifier model(small_config());
  for (auto& p : model->named_parameters()) {
    if (p.key() != "backbone.fc2.weight") continue;
    // Right shape (3x64), but backed by a storage of 8 floats: a crafted file.
    p.value().unsafeGetTensorImpl()->set_storage_keep_dtype(torch::zeros({8}).storage());
  }
  save_model(path("m.pw"), model, nullptr);
  EXPECT_THAT([&] { load_model(path("m.pw")); },
              ::testing::ThrowsMessage<InputError>(
                  HasSubstr("weight 'backbone.fc2.weight' declares 768 bytes but stores 32")));
}

TEST_F(ModelFileTest, ATensorDeclaringTerabytesIsRefusedWithoutAllocating) {
  PatchClassifier model(small_config());
  for (auto& p : model->named_parameters()) {
    if (p.key() != "backbone.fc2.bias") continue;
    p.value().unsafeGetTensorImpl()->set_sizes_contiguous({int64_t(1) << 40});
  }
  save_model(path("m.pw"), model, nullptr);
  EXPECT_THAT([&] { load_model(path("m.pw")); },
              ::testing::ThrowsMessage<InputError>(
                  HasSubstr("weight 'backbone.fc2.bias' has shape 1099511627776, expected 3")));
}

TEST_F(ModelFileTest, AnArchiveThatDefinesCodeIsRefusedWithoutRunningIt) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  const std::string good = test::read_file(path("m.pw"));
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= uint64_t(uint8_t(good[8 + i])) << (8 * i);
  // A TorchScript module with a method, in place of the weights archive.
  torch::jit::Module scripted("__torch__.Evil");
  scripted.define("def forward(self, x: int) -> int:\n  return x + 1\n");
  std::ostringstream archive;
  scripted.save(archive);
  write_text(path("evil.pw"), reseal(good.substr(0, 16 + length) + archive.str() + "PWCK0000"));
  EXPECT_THAT([&] { load_model(path("evil.pw")); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("defines code ('def forward")));
}

TEST_F(ModelFileTest, RefusesTruncatedWeights) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  std::string text = test::read_file(path("m.pw"));
  write_text(path("m.pw"), text.substr(0, text.size() - 500));
  EXPECT_THAT([&] { load_model(path("m.pw")); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("truncated or corrupt")));
  // Past the checksum (resealed), the archive itself is found wanting.
  write_text(path("m.pw"), reseal(text.substr(0, text.size() - 500)));
  EXPECT_THAT([&] { load_model(path("m.pw")); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("weights do not load")));
}

TEST_F(ModelFileTest, RefusesATruncatedConfiguration) {
  PatchClassifier model(small_config());
  save_model(path("m.pw"), model, nullptr);
  write_text(path("m.pw"), test::read_file(path("m.pw")).substr(0, 40));
  EXPECT_THROW(load_model(path("m.pw")), InputError);
}

TEST_F(ModelFileTest, RefusesAMissingFileAndADirectory) {
  EXPECT_THAT([&] { load_model(path("none.pw")); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("no such model file")));
  EXPECT_THAT([&] { load_model(dir_.string()); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("directory")));
}

TEST_F(ModelFileTest, SavingIntoAMissingFolderFailsCleanly) {
  PatchClassifier model(small_config());
  EXPECT_THAT([&] { save_model(path("no/such/dir/m.pw"), model, nullptr); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("does not exist")));
}

TEST_F(ModelFileTest, AFailedWriteLeavesTheExistingFileIntactAndNoTemporary) {
  write_text(path("out"), "precious");
  EXPECT_THROW(write_file_atomically(path("out"), "--out",
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
  EXPECT_THAT([&] { model_config_from_json(j, "x.pw"); },
              ::testing::ThrowsMessage<InputError>(HasSubstr("lacks 'grid'")));
}

}  // namespace
}  // namespace patchwise
