// mean: log( 1/P sum_i p_i ), the seed's rule (fusion.h).
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "rules.h"

namespace patchwise::detail {
namespace {

at::Tensor fuse_mean(const at::Tensor& log_p, const at::Tensor& mask) {
  if (!mask.defined()) {
    return torch::logsumexp(log_p, /*dim=*/1) - std::log(static_cast<double>(log_p.size(1)));
  }
  const BagMask m = bag_mask(mask, log_p);
  const double inf = std::numeric_limits<double>::infinity();
  return torch::logsumexp(log_p.masked_fill(~m.valid, -inf), /*dim=*/1) - m.count.log();
}

}  // namespace

FusionRuleInfo mean_rule() {
  return fixed_rule("mean", "the mean of the patches' probabilities (the seed's rule)", fuse_mean);
}

}  // namespace patchwise::detail
