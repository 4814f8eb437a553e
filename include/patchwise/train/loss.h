#pragma once
// Losses over a PatchOutput, with y the image labels [B]:
//   patch : mean over b and i of CE(patch_logits[b,i], y[b])  (the seed's rule: every patch
//           trained on the repeated image label); over bags, each bag's mean over its
//           real tiles, then the mean over bags: every image weighs the same, as in the
//           fused loss, so data-parallel ranks can weigh their parts by images
//   fused : mean over b of -log_probs[b, y[b]]                 (NLL of the fused output)
//   both  : patch + fused
// Label smoothing e replaces each one-hot target by (1 - e) one-hot + e / K uniform:
// each cross-entropy becomes (1 - e) * NLL + e * mean over the K classes of -log p,
// as PyTorch's CrossEntropyLoss(label_smoothing=e).

#include <ATen/core/Tensor.h>

#include <string>

#include "patchwise/model/patch_classifier.h"

namespace patchwise {

enum class LossKind { kPatch, kFused, kBoth };

/// "patch", "fused", "both"; throws InputError otherwise.
LossKind parse_loss_kind(const std::string& name);
std::string loss_kind_name(LossKind kind);

/// Throws InputError when `kind` would have to differentiate through `rule` (vote), or
/// would leave a learned rule untrained (patch loss with attention).
void check_trainable(LossKind kind, FusionRule rule);

/// Throws InputError for a smoothing outside [0, 1).
void check_label_smoothing(double smoothing);

/// A scalar loss.
at::Tensor compute_loss(
    LossKind kind, const PatchOutput& out, const at::Tensor& labels, double smoothing = 0);

}  // namespace patchwise
