#pragma once
// Fusion: patch logits [B,P,K] -> image log-probabilities [B,K] (rows sum to 1
// after exp). With p[b,i,k] = softmax over k of the patch logits, the fixed rules:
//   mean  : log( 1/P sum_i p[b,i,k] )                          (the seed's rule)
//   gmean : log_softmax_k( 1/P sum_i log p[b,i,k] )  = softmax of the mean logits (BagNet)
//   max   : log_softmax_k( max_i log p[b,i,k] )      = max_i p, renormalized
//   vote  : log( (c[b,k] + m[b,k]) / (P + 1) ), c = number of patches whose argmax is k,
//           m = the mean probability; the majority wins, a tie goes to the larger mean
//           probability, and the result is a proper distribution. Not trainable.
//   iqm   : log_softmax_k( log of the mean of p[b,i,k] over the middle half of the
//           patches, ranked by p[b,i,k] ): the interquartile mean (src/fusion/iqm.cpp)
// All are computed in log space, so probabilities of 1e-30 give no NaN.
//
// Bags: with a mask [B,P] (true = a real patch), row b holds a bag of n_b = sum_i
// mask[b,i] >= 1 tiles padded to P (patch/bags.h, pad_bags); every rule then runs over the
// bag's own tiles (P above becomes n_b) and the padding's values never change a result or
// receive a gradient. Without a mask every row is a full bag of P (the fixed grid).
// The learned rules fuse the patches' backbone features h_i [F] rather than their logits:
//   attention, gated-attention : weights over the patches (fusion/attention.h), the
//                                pooled features go through the backbone's classifier
//   concat : log_softmax( W [h_1; ...; h_P] + b ), W [K,P*F]: a linear classifier over
//            the features laid side by side in grid order, so each grid position has
//            weights of its own (a fixed grid only: bags have no positions)
//
// Each rule is an entry of the registry (fusion/registry.h) in a file of its own under
// src/fusion/; a FusionRule is a handle on its entry.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace patchwise {

/// A fusion rule: the index of its registry entry (fusion/registry.h).
class FusionRule {
 public:
  constexpr FusionRule() = default;  ///< mean, the seed's rule
  constexpr explicit FusionRule(int index) : index_(index) {}
  constexpr int index() const { return index_; }
  constexpr bool operator==(FusionRule other) const { return index_ == other.index_; }
  constexpr bool operator!=(FusionRule other) const { return index_ != other.index_; }
  constexpr bool operator<(FusionRule other) const { return index_ < other.index_; }  ///< maps

  /// The built-in rules, for code that names one; their indices follow the registry's
  /// table (src/fusion/registry.cpp), and a test holds them to it.
  static const FusionRule kMean, kGMean, kMax, kVote, kAttention, kGatedAttention, kConcat;

 private:
  int index_ = 0;
};

inline constexpr FusionRule FusionRule::kMean{0};
inline constexpr FusionRule FusionRule::kGMean{1};
inline constexpr FusionRule FusionRule::kMax{2};
inline constexpr FusionRule FusionRule::kVote{3};
inline constexpr FusionRule FusionRule::kAttention{4};
inline constexpr FusionRule FusionRule::kGatedAttention{5};
inline constexpr FusionRule FusionRule::kConcat{6};

/// A registered rule's name ("mean", "gmean", ...); throws OptionError naming --fusion
/// and listing the names otherwise.
FusionRule parse_fusion_rule(const std::string& name);
std::string fusion_rule_name(FusionRule rule);
/// Every rule, in the registry's order.
const std::vector<FusionRule>& all_fusion_rules();
/// The fixed rules (no parameters), in the order eval tables list them.
const std::vector<FusionRule>& fixed_fusion_rules();
/// Every rule's name, in all_fusion_rules' order, for messages and help: "mean, ... or concat".
std::string fusion_rule_names();
/// Whether `rule` has parameters trained with the model.
bool fusion_rule_is_learned(FusionRule rule);
/// Whether `rule` weighs the patches with attention (PatchOutput::attention).
bool fusion_rule_has_attention(FusionRule rule);
/// Whether `rule` gives each grid position weights of its own (fixed grids only).
bool fusion_rule_needs_positions(FusionRule rule);
/// Throws OptionError naming "fusion" when `rule` cannot fuse the model's patches: a rule
/// that needs positions on a tiled model, whose bags of tiles have none.
void check_fusion_fits(FusionRule rule, bool tiled);
/// Whether a loss on the fused output can be trained through `rule`.
bool fusion_rule_is_differentiable(FusionRule rule);

/// patch logits [B,P,K] -> log-probabilities [B,K], for a fixed rule (InputError otherwise).
/// `mask` bool [B,P]: the real tiles of padded bags (see above); undefined: all real.
at::Tensor fuse(FusionRule rule, const at::Tensor& patch_logits, const at::Tensor& mask = {});

}  // namespace patchwise
