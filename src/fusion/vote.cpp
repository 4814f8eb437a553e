// vote: log( (c_k + m_k) / (P + 1) ), the majority of the patches' argmax, ties to the
// larger mean probability (fusion.h). Not differentiable.
#include <torch/torch.h>

#include "rules.h"

namespace patchwise::detail {
namespace {

at::Tensor fuse_vote(const at::Tensor& log_p, const at::Tensor& mask) {
  at::Tensor winners = torch::one_hot(log_p.argmax(/*dim=*/2), log_p.size(2));  // [B,P,K]
  if (!mask.defined()) {
    at::Tensor counts = winners.to(log_p.scalar_type()).sum(1);
    at::Tensor mean_p = log_p.exp().mean(1);
    return ((counts + mean_p) / static_cast<double>(log_p.size(1) + 1)).log();
  }
  const BagMask m = bag_mask(mask, log_p);
  at::Tensor counts = (winners.to(log_p.scalar_type()) * m.valid).sum(1);
  at::Tensor mean_p = (log_p.exp() * m.valid).sum(1) / m.count;
  return ((counts + mean_p) / (m.count + 1)).log();
}

}  // namespace

FusionRuleInfo vote_rule() {
  FusionRuleInfo r = fixed_rule(
      "vote",
      "the majority of the patches' predictions, ties to the larger mean probability",
      fuse_vote);
  r.differentiable = false;
  return r;
}

}  // namespace patchwise::detail
