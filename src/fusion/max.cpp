// max: log_softmax( max_i log p_i ), the largest probability of each class, renormalized
// (fusion.h).
#include <torch/torch.h>

#include <limits>

#include "rules.h"

namespace patchwise::detail {
namespace {

at::Tensor fuse_max(const at::Tensor& log_p, const at::Tensor& mask) {
  if (!mask.defined()) return torch::log_softmax(std::get<0>(log_p.max(/*dim=*/1)), /*dim=*/1);
  const BagMask m = bag_mask(mask, log_p);
  const double inf = std::numeric_limits<double>::infinity();
  return torch::log_softmax(std::get<0>(log_p.masked_fill(~m.valid, -inf).max(1)), 1);
}

}  // namespace

FusionRuleInfo max_rule() {
  return fixed_rule("max", "each class's largest patch probability, renormalized", fuse_max);
}

}  // namespace patchwise::detail
