// gmean: log_softmax( 1/P sum_i log p_i ), the softmax of the mean logits (fusion.h).
#include <torch/torch.h>

#include "rules.h"

namespace patchwise::detail {
namespace {

at::Tensor fuse_gmean(const at::Tensor& log_p, const at::Tensor& mask) {
  if (!mask.defined()) return torch::log_softmax(log_p.mean(/*dim=*/1), /*dim=*/1);
  const BagMask m = bag_mask(mask, log_p);
  return torch::log_softmax(log_p.masked_fill(~m.valid, 0).sum(1) / m.count, /*dim=*/1);
}

}  // namespace

FusionRuleInfo gmean_rule() {
  return fixed_rule(
      "gmean",
      "the normalized geometric mean of the probabilities: softmax of the mean logits",
      fuse_gmean);
}

}  // namespace patchwise::detail
