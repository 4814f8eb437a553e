#include "patchwise/fusion/fusion.h"

#include <cmath>

#include <torch/torch.h>

#include "patchwise/core/error.h"

namespace patchwise {

FusionRule parse_fusion_rule(const std::string& name) {
  for (FusionRule rule : all_fusion_rules()) {
    if (fusion_rule_name(rule) == name) return rule;
  }
  throw OptionError(
      "fusion",
      fmt::format("unknown fusion rule '{}', expected mean, gmean, max, vote, attention or "
                  "gated-attention",
                  name));
}

std::string fusion_rule_name(FusionRule rule) {
  switch (rule) {
    case FusionRule::kMean: return "mean";
    case FusionRule::kGMean: return "gmean";
    case FusionRule::kMax: return "max";
    case FusionRule::kVote: return "vote";
    case FusionRule::kAttention: return "attention";
    case FusionRule::kGatedAttention: return "gated-attention";
  }
  return "mean";
}

const std::vector<FusionRule>& all_fusion_rules() {
  static const std::vector<FusionRule> rules = {FusionRule::kMean,      FusionRule::kGMean,
                                                FusionRule::kMax,       FusionRule::kVote,
                                                FusionRule::kAttention, FusionRule::kGatedAttention};
  return rules;
}

const std::vector<FusionRule>& fixed_fusion_rules() {
  static const std::vector<FusionRule> rules = {FusionRule::kMean, FusionRule::kGMean,
                                                FusionRule::kMax, FusionRule::kVote};
  return rules;
}

bool fusion_rule_is_learned(FusionRule rule) {
  return rule == FusionRule::kAttention || rule == FusionRule::kGatedAttention;
}

bool fusion_rule_is_differentiable(FusionRule rule) { return rule != FusionRule::kVote; }

at::Tensor fuse(FusionRule rule, const at::Tensor& patch_logits) {
  TORCH_CHECK(patch_logits.dim() == 3, "fuse expects patch logits [B,P,K], got ",
              patch_logits.sizes());
  const int64_t patches = patch_logits.size(1);
  at::Tensor log_p = torch::log_softmax(patch_logits, /*dim=*/2);
  switch (rule) {
    case FusionRule::kMean:
      return torch::logsumexp(log_p, /*dim=*/1) - std::log(static_cast<double>(patches));
    case FusionRule::kGMean:
      return torch::log_softmax(log_p.mean(/*dim=*/1), /*dim=*/1);
    case FusionRule::kMax:
      return torch::log_softmax(std::get<0>(log_p.max(/*dim=*/1)), /*dim=*/1);
    case FusionRule::kAttention:
    case FusionRule::kGatedAttention:
      throw InputError(fmt::format("fusion '{}' is learned: it needs the model's features, use "
                                   "PatchClassifier",
                                   fusion_rule_name(rule)));
    case FusionRule::kVote: {
      const int64_t classes = log_p.size(2);
      at::Tensor winners = log_p.argmax(/*dim=*/2);  // [B,P]
      at::Tensor counts = torch::one_hot(winners, classes).to(log_p.scalar_type()).sum(1);
      at::Tensor mean_p = log_p.exp().mean(1);
      return ((counts + mean_p) / static_cast<double>(patches + 1)).log();
    }
  }
  return log_p.mean(1);
}

}  // namespace patchwise
