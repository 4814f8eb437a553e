#include "patchwise/fusion/fusion.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "patchwise/base/error.h"

namespace patchwise {

FusionRule parse_fusion_rule(const std::string& name) {
  for (FusionRule rule : all_fusion_rules()) {
    if (fusion_rule_name(rule) == name) return rule;
  }
  throw OptionError(
      "fusion", fmt::format("unknown fusion rule '{}', expected {}", name, fusion_rule_names()));
}

std::string fusion_rule_name(FusionRule rule) {
  switch (rule) {
    case FusionRule::kMean:
      return "mean";
    case FusionRule::kGMean:
      return "gmean";
    case FusionRule::kMax:
      return "max";
    case FusionRule::kVote:
      return "vote";
    case FusionRule::kAttention:
      return "attention";
    case FusionRule::kGatedAttention:
      return "gated-attention";
    case FusionRule::kConcat:
      return "concat";
  }
  return "mean";
}

const std::vector<FusionRule>& all_fusion_rules() {
  static const std::vector<FusionRule> rules = {
      FusionRule::kMean,
      FusionRule::kGMean,
      FusionRule::kMax,
      FusionRule::kVote,
      FusionRule::kAttention,
      FusionRule::kGatedAttention,
      FusionRule::kConcat};
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

const std::vector<FusionRule>& fixed_fusion_rules() {
  static const std::vector<FusionRule> rules = {
      FusionRule::kMean, FusionRule::kGMean, FusionRule::kMax, FusionRule::kVote};
  return rules;
}

bool fusion_rule_is_learned(FusionRule rule) {
  return fusion_rule_has_attention(rule) || rule == FusionRule::kConcat;
}

bool fusion_rule_has_attention(FusionRule rule) {
  return rule == FusionRule::kAttention || rule == FusionRule::kGatedAttention;
}

bool fusion_rule_needs_positions(FusionRule rule) { return rule == FusionRule::kConcat; }

bool fusion_rule_is_differentiable(FusionRule rule) { return rule != FusionRule::kVote; }

void check_fusion_fits(FusionRule rule, bool tiled) {
  check_option(
      !tiled || !fusion_rule_needs_positions(rule),
      "fusion",
      "{}: bags of tiles have no fixed positions, expected another rule for a tiled model",
      fusion_rule_name(rule));
}

namespace {

/// Bags padded to P: `mask` bool [B,P] -> [B,P,1], and the bag sizes as [B,1] of `like`'s type.
struct BagMask {
  at::Tensor valid;  ///< bool [B,P,1]
  at::Tensor count;  ///< [B,1]
};

BagMask bag_mask(const at::Tensor& mask, const at::Tensor& like) {
  TORCH_CHECK(
      mask.dim() == 2 && mask.size(0) == like.size(0) && mask.size(1) == like.size(1) &&
          mask.scalar_type() == torch::kBool,
      "fuse: mask must be bool [B,P] matching the logits ",
      like.sizes(),
      ", got ",
      mask.sizes());
  return {mask.unsqueeze(2), mask.sum(1, /*keepdim=*/true).to(like.scalar_type())};
}

/// Without a mask: every row is a bag of all P patches.
at::Tensor fuse_full(FusionRule rule, const at::Tensor& log_p) {
  const int64_t patches = log_p.size(1);
  switch (rule) {
    case FusionRule::kMean:
      return torch::logsumexp(log_p, /*dim=*/1) - std::log(static_cast<double>(patches));
    case FusionRule::kGMean:
      return torch::log_softmax(log_p.mean(/*dim=*/1), /*dim=*/1);
    case FusionRule::kMax:
      return torch::log_softmax(std::get<0>(log_p.max(/*dim=*/1)), /*dim=*/1);
    case FusionRule::kVote: {
      at::Tensor winners = log_p.argmax(/*dim=*/2);  // [B,P]
      at::Tensor counts = torch::one_hot(winners, log_p.size(2)).to(log_p.scalar_type()).sum(1);
      at::Tensor mean_p = log_p.exp().mean(1);
      return ((counts + mean_p) / static_cast<double>(patches + 1)).log();
    }
    default:
      break;
  }
  throw std::logic_error("fuse_full: a learned rule");
}

/// The same rules over padded bags: the padding is -inf for the sums of probabilities
/// and the maxima, 0 for the sums of logs and the votes.
at::Tensor fuse_bags(FusionRule rule, const at::Tensor& log_p, const at::Tensor& mask) {
  const BagMask m = bag_mask(mask, log_p);
  const double inf = std::numeric_limits<double>::infinity();
  switch (rule) {
    case FusionRule::kMean:
      return torch::logsumexp(log_p.masked_fill(~m.valid, -inf), /*dim=*/1) - m.count.log();
    case FusionRule::kGMean:
      return torch::log_softmax(log_p.masked_fill(~m.valid, 0).sum(1) / m.count, /*dim=*/1);
    case FusionRule::kMax:
      return torch::log_softmax(std::get<0>(log_p.masked_fill(~m.valid, -inf).max(1)), 1);
    case FusionRule::kVote: {
      at::Tensor winners = torch::one_hot(log_p.argmax(/*dim=*/2), log_p.size(2));
      at::Tensor counts = (winners.to(log_p.scalar_type()) * m.valid).sum(1);
      at::Tensor mean_p = (log_p.exp() * m.valid).sum(1) / m.count;
      return ((counts + mean_p) / (m.count + 1)).log();
    }
    default:
      break;
  }
  throw std::logic_error("fuse_bags: a learned rule");
}

}  // namespace

at::Tensor fuse(FusionRule rule, const at::Tensor& patch_logits, const at::Tensor& mask) {
  TORCH_CHECK(
      patch_logits.dim() == 3, "fuse expects patch logits [B,P,K], got ", patch_logits.sizes());
  if (fusion_rule_is_learned(rule)) {
    throw InputError(fmt::format(
        "fusion '{}' is learned: it needs the model's features, use "
        "PatchClassifier",
        fusion_rule_name(rule)));
  }
  at::Tensor log_p = torch::log_softmax(patch_logits, /*dim=*/2);
  return mask.defined() ? fuse_bags(rule, log_p, mask) : fuse_full(rule, log_p);
}

}  // namespace patchwise
