#pragma once
// Fusion: patch logits [B,P,K] -> image log-probabilities [B,K] (rows sum to 1
// after exp). With p[b,i,k] = softmax over k of the patch logits:
//   mean  : log( 1/P sum_i p[b,i,k] )                          (the seed's rule)
//   gmean : log_softmax_k( 1/P sum_i log p[b,i,k] )  = softmax of the mean logits (BagNet)
//   max   : log_softmax_k( max_i log p[b,i,k] )      = max_i p, renormalized
//   vote  : log( (c[b,k] + m[b,k]) / (P + 1) ), c = number of patches whose argmax is k,
//           m = the mean probability; the majority wins, a tie goes to the larger mean
//           probability, and the result is a proper distribution. Not trainable.
// All are computed in log space, so probabilities of 1e-30 give no NaN.

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace patchwise {

enum class FusionRule { kMean, kGMean, kMax, kVote };

/// "mean", "gmean", "max", "vote"; throws InputError naming `flag` otherwise.
FusionRule parse_fusion_rule(const std::string& name, const std::string& flag = "--fusion");
std::string fusion_rule_name(FusionRule rule);
/// Every fixed rule, in the order eval tables list them.
const std::vector<FusionRule>& all_fusion_rules();
/// Whether a loss on the fused output can be trained through `rule`.
bool fusion_rule_is_differentiable(FusionRule rule);

/// patch logits [B,P,K] -> log-probabilities [B,K].
at::Tensor fuse(FusionRule rule, const at::Tensor& patch_logits);

}  // namespace patchwise
