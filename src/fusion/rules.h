#pragma once
// The registered fusion rules (src/fusion/registry.cpp holds the table), one file each,
// and what the fixed rules share: the mask of padded bags.

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>

#include "patchwise/fusion/registry.h"

namespace patchwise::detail {

FusionRuleInfo mean_rule();
FusionRuleInfo gmean_rule();
FusionRuleInfo max_rule();
FusionRuleInfo vote_rule();
FusionRuleInfo attention_rule();
FusionRuleInfo gated_attention_rule();
FusionRuleInfo concat_rule();
FusionRuleInfo iqm_rule();

/// The entry of a fixed rule.
inline FusionRuleInfo fixed_rule(
    std::string name, std::string summary,
    at::Tensor (*fuse)(const at::Tensor& log_p, const at::Tensor& mask)) {
  FusionRuleInfo r;
  r.name = std::move(name);
  r.summary = std::move(summary);
  r.fuse = fuse;
  return r;
}

/// Bags padded to P: `mask` bool [B,P] as [B,P,1], and the bag sizes as [B,1] of
/// `like`'s type.
struct BagMask {
  at::Tensor valid;  ///< bool [B,P,1]
  at::Tensor count;  ///< [B,1]
};
BagMask bag_mask(const at::Tensor& mask, const at::Tensor& like);

}  // namespace patchwise::detail
