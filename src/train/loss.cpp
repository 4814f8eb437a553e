#include "patchwise/train/loss.h"

#include <torch/torch.h>

#include "patchwise/base/error.h"

namespace patchwise {

LossKind parse_loss_kind(const std::string& name) {
  if (name == "patch") return LossKind::kPatch;
  if (name == "fused") return LossKind::kFused;
  if (name == "both") return LossKind::kBoth;
  throw OptionError("loss", fmt::format("unknown loss '{}', expected patch, fused or both", name));
}

std::string loss_kind_name(LossKind kind) {
  switch (kind) {
    case LossKind::kPatch:
      return "patch";
    case LossKind::kFused:
      return "fused";
    case LossKind::kBoth:
      return "both";
  }
  return "patch";
}

void check_trainable(LossKind kind, FusionRule rule) {
  check_option(
      kind != LossKind::kPatch || !fusion_rule_is_learned(rule),
      "loss",
      "patch with fusion {}: the rule's own weights would never be trained; "
      "use loss fused or both",
      fusion_rule_name(rule));
  check_option(
      kind == LossKind::kPatch || fusion_rule_is_differentiable(rule),
      "loss",
      "{} with fusion {}: the fused output of '{}' has no gradient; "
      "use loss patch with it, or another fusion rule",
      loss_kind_name(kind),
      fusion_rule_name(rule),
      fusion_rule_name(rule));
}

void check_label_smoothing(double smoothing) {
  check_option(
      smoothing >= 0 && smoothing < 1, "label-smoothing", "{}, expected 0 <= e < 1", smoothing);
}

namespace {

/// Each row's cross-entropy against its smoothed target, from log-probabilities [N,K].
at::Tensor smoothed_nll(const at::Tensor& log_probs, const at::Tensor& targets, double e) {
  at::Tensor nll = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1);
  if (e == 0) return nll;
  return (1 - e) * nll - e * log_probs.mean(1);
}

}  // namespace

at::Tensor compute_loss(
    LossKind kind, const PatchOutput& out, const at::Tensor& labels, double smoothing) {
  auto patch_loss = [&] {
    const int64_t patches = out.patch_logits.size(1);
    at::Tensor log_probs = torch::log_softmax(out.patch_logits.flatten(0, 1), 1);
    at::Tensor each =
        smoothed_nll(log_probs, labels.repeat_interleave(patches), smoothing).view({-1, patches});
    if (!out.mask.defined()) return each.mean();
    // Bags: each bag's mean over its real tiles, then the mean over bags.
    at::Tensor real = out.mask.to(each.scalar_type());
    return ((each * real).sum(1) / real.sum(1)).mean();
  };
  auto fused_loss = [&] { return smoothed_nll(out.log_probs, labels, smoothing).mean(); };
  switch (kind) {
    case LossKind::kPatch:
      return patch_loss();
    case LossKind::kFused:
      return fused_loss();
    case LossKind::kBoth:
      return patch_loss() + fused_loss();
  }
  return patch_loss();
}

}  // namespace patchwise
