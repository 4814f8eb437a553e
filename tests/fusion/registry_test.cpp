// The fusion registry (fusion/registry.h): the entries the rest of the library reads.

#include "patchwise/fusion/registry.h"

#include <gmock/gmock.h>

#include <set>

#include "patchwise/base/error.h"

namespace patchwise {
namespace {

TEST(FusionRegistryTest, TheNamedRulesAreTheTablesEntriesAtTheirIndices) {
  const std::vector<std::pair<FusionRule, std::string>> named = {
      {FusionRule::kMean, "mean"},
      {FusionRule::kGMean, "gmean"},
      {FusionRule::kMax, "max"},
      {FusionRule::kVote, "vote"},
      {FusionRule::kAttention, "attention"},
      {FusionRule::kGatedAttention, "gated-attention"},
      {FusionRule::kConcat, "concat"}};
  for (const auto& [rule, name] : named) EXPECT_EQ(fusion_rule_info(rule).name, name);
  EXPECT_EQ(FusionRule(), FusionRule::kMean);  // the seed's rule is the default
}

TEST(FusionRegistryTest, EveryEntryIsEitherAFunctionOrAHeadWithAModuleName) {
  std::set<std::string> names, modules;
  for (const FusionRuleInfo& info : fusion_rules()) {
    EXPECT_TRUE(names.insert(info.name).second) << "two rules named " << info.name;
    EXPECT_FALSE(info.summary.empty()) << info.name;
    EXPECT_NE(info.fuse == nullptr, info.make_head == nullptr) << info.name;
    EXPECT_EQ(info.learned(), !info.module.empty()) << info.name;
    EXPECT_TRUE(info.learned() || !info.needs_positions) << info.name << ": a fixed rule";
  }
  EXPECT_EQ(all_fusion_rules().size(), fusion_rules().size());
  for (FusionRule rule : fixed_fusion_rules()) EXPECT_FALSE(fusion_rule_is_learned(rule));
}

TEST(FusionRegistryTest, AHeadRefusesOptionsItCannotTake) {
  FusionHeadOptions options;
  options.positions = 0;  // a tiled model's bags
  options.position_embedding = true;
  const FusionRuleInfo& attention = fusion_rule_info(FusionRule::kAttention);
  EXPECT_THAT(
      [&] { attention.make_head(options); },
      ::testing::ThrowsMessage<OptionError>(::testing::HasSubstr("position_embedding")));
  options.position_embedding = false;
  options.hidden = 0;
  EXPECT_THAT(
      [&] { attention.make_head(options); },
      ::testing::ThrowsMessage<OptionError>(::testing::HasSubstr("attention_hidden: 0")));
  options.hidden = 8;
  EXPECT_THAT(
      [&] { fusion_rule_info(FusionRule::kConcat).make_head(options); },
      ::testing::ThrowsMessage<OptionError>(::testing::HasSubstr("no fixed positions")));
  options.positions = 4;
  options.features = 5;
  options.classes = 3;
  auto head = fusion_rule_info(FusionRule::kConcat).make_head(options);
  const std::vector<at::Tensor> params = head->class_parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0].sizes(), (std::vector<int64_t>{3, 20}));  // [K, P*F]
}

}  // namespace
}  // namespace patchwise
