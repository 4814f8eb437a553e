// The fusion registry: one line per rule below; each lives in its own file.
#include "patchwise/fusion/registry.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <stdexcept>

#include "patchwise/base/error.h"
#include "rules.h"

namespace patchwise {

const std::vector<FusionRuleInfo>& fusion_rules() {
  static const std::vector<FusionRuleInfo> all = {
      detail::mean_rule(),
      detail::gmean_rule(),
      detail::max_rule(),
      detail::vote_rule(),
      detail::attention_rule(),
      detail::gated_attention_rule(),
      detail::concat_rule(),
      detail::iqm_rule(),
  };
  return all;
}

const FusionRuleInfo& fusion_rule_info(FusionRule rule) {
  const std::vector<FusionRuleInfo>& all = fusion_rules();
  TORCH_CHECK(
      rule.index() >= 0 && rule.index() < static_cast<int>(all.size()),
      "fusion rule ",
      rule.index(),
      " is not registered");
  return all[static_cast<size_t>(rule.index())];
}

FusionRule parse_fusion_rule(const std::string& name) {
  for (FusionRule rule : all_fusion_rules()) {
    if (fusion_rule_info(rule).name == name) return rule;
  }
  throw OptionError(
      "fusion", fmt::format("unknown fusion rule '{}', expected {}", name, fusion_rule_names()));
}

std::string fusion_rule_name(FusionRule rule) { return fusion_rule_info(rule).name; }

const std::vector<FusionRule>& all_fusion_rules() {
  static const std::vector<FusionRule> rules = [] {
    std::vector<FusionRule> out;
    for (size_t i = 0; i < fusion_rules().size(); ++i) out.emplace_back(static_cast<int>(i));
    return out;
  }();
  return rules;
}

const std::vector<FusionRule>& fixed_fusion_rules() {
  static const std::vector<FusionRule> rules = [] {
    std::vector<FusionRule> out;
    for (FusionRule rule : all_fusion_rules()) {
      if (!fusion_rule_is_learned(rule)) out.push_back(rule);
    }
    return out;
  }();
  return rules;
}

std::string fusion_rule_names() {
  const std::vector<FusionRule>& rules = all_fusion_rules();
  std::string names;
  for (size_t i = 0; i < rules.size(); ++i) {
    if (i > 0) names += i + 1 == rules.size() ? " or " : ", ";
    names += fusion_rule_name(rules[i]);
  }
  return names;
}

bool fusion_rule_is_learned(FusionRule rule) { return fusion_rule_info(rule).learned(); }

bool fusion_rule_has_attention(FusionRule rule) { return fusion_rule_info(rule).attention; }

bool fusion_rule_needs_positions(FusionRule rule) { return fusion_rule_info(rule).needs_positions; }

bool fusion_rule_is_differentiable(FusionRule rule) {
  return fusion_rule_info(rule).differentiable;
}

void check_fusion_fits(FusionRule rule, bool tiled) {
  check_option(
      !tiled || !fusion_rule_needs_positions(rule),
      "fusion",
      "{}: bags of tiles have no fixed positions, expected another rule for a tiled model",
      fusion_rule_name(rule));
}

at::Tensor fuse(FusionRule rule, const at::Tensor& patch_logits, const at::Tensor& mask) {
  TORCH_CHECK(
      patch_logits.dim() == 3, "fuse expects patch logits [B,P,K], got ", patch_logits.sizes());
  const FusionRuleInfo& info = fusion_rule_info(rule);
  if (info.learned()) {
    throw InputError(fmt::format(
        "fusion '{}' is learned: it needs the model's features, use PatchClassifier", info.name));
  }
  at::Tensor log_p = torch::log_softmax(patch_logits, /*dim=*/2);
  if (mask.defined()) {
    TORCH_CHECK(
        mask.dim() == 2 && mask.size(0) == log_p.size(0) && mask.size(1) == log_p.size(1) &&
            mask.scalar_type() == torch::kBool,
        "fuse: mask must be bool [B,P] matching the logits ",
        log_p.sizes(),
        ", got ",
        mask.sizes());
  }
  return info.fuse(log_p, mask);
}

namespace detail {

BagMask bag_mask(const at::Tensor& mask, const at::Tensor& like) {
  return {mask.unsqueeze(2), mask.sum(1, /*keepdim=*/true).to(like.scalar_type())};
}

}  // namespace detail
}  // namespace patchwise
