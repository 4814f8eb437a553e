#include "patchwise/train/loss.h"

#include <torch/torch.h>

#include "patchwise/core/error.h"

namespace patchwise {

LossKind parse_loss_kind(const std::string& name) {
  if (name == "patch") return LossKind::kPatch;
  if (name == "fused") return LossKind::kFused;
  if (name == "both") return LossKind::kBoth;
  throw OptionError("loss", fmt::format("unknown loss '{}', expected patch, fused or both", name));
}

std::string loss_kind_name(LossKind kind) {
  switch (kind) {
    case LossKind::kPatch: return "patch";
    case LossKind::kFused: return "fused";
    case LossKind::kBoth: return "both";
  }
  return "patch";
}

void check_trainable(LossKind kind, FusionRule rule) {
  check_option(kind != LossKind::kPatch || !fusion_rule_is_learned(rule), "loss",
              "patch with fusion {}: the attention weights would never be trained; "
              "use loss fused or both",
              fusion_rule_name(rule));
  check_option(kind == LossKind::kPatch || fusion_rule_is_differentiable(rule), "loss",
              "{} with fusion {}: the fused output of '{}' has no gradient; "
              "use loss patch with it, or another fusion rule",
              loss_kind_name(kind), fusion_rule_name(rule), fusion_rule_name(rule));
}

at::Tensor compute_loss(LossKind kind, const PatchOutput& out, const at::Tensor& labels) {
  auto patch_loss = [&] {
    const int64_t patches = out.patch_logits.size(1);
    at::Tensor logits = out.patch_logits.flatten(0, 1);
    at::Tensor targets = labels.repeat_interleave(patches);
    if (!out.mask.defined()) return torch::cross_entropy_loss(logits, targets);
    // Bags: each bag's mean over its real tiles, then the mean over bags.
    at::Tensor each = torch::cross_entropy_loss(logits, targets, {}, at::Reduction::None)
                          .view({-1, patches});
    at::Tensor real = out.mask.to(each.scalar_type());
    return ((each * real).sum(1) / real.sum(1)).mean();
  };
  auto fused_loss = [&] { return torch::nll_loss(out.log_probs, labels); };
  switch (kind) {
    case LossKind::kPatch: return patch_loss();
    case LossKind::kFused: return fused_loss();
    case LossKind::kBoth: return patch_loss() + fused_loss();
  }
  return patch_loss();
}

}  // namespace patchwise
