// iqm: the interquartile mean of each class's patch probabilities, renormalized:
//   log_softmax_k( log( 1/(n - 2q) sum_{r=q}^{n-q-1} p_(r)[k] ) ),  q = floor(n/4),
// with p_(0)[k] <= ... <= p_(n-1)[k] the n patches' probabilities of class k in order.
// The quarter of the patches most sure of a class and the quarter least sure of it do not
// count: one stray patch (a tile of pen mark, a blank corner) cannot carry the decision as
// it can under mean or max. Up to three patches nothing is dropped (mean); four keep the
// middle two.
#include <torch/torch.h>

#include <limits>

#include "rules.h"

namespace patchwise::detail {
namespace {

at::Tensor fuse_iqm(const at::Tensor& log_p, const at::Tensor& mask) {
  const int64_t longest = log_p.size(1);
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor count;  // [B,1,1]: each bag's n
  at::Tensor values = log_p;
  if (mask.defined()) {
    const BagMask m = bag_mask(mask, log_p);
    values = log_p.masked_fill(~m.valid, inf);  // the padding sorts last
    count = m.count.unsqueeze(2);
  } else {
    count = torch::full({log_p.size(0), 1, 1}, static_cast<double>(longest), log_p.options());
  }
  at::Tensor sorted = std::get<0>(values.sort(/*dim=*/1));  // [B,P,K], ascending
  at::Tensor quarter = (count / 4).floor();
  at::Tensor rank = torch::arange(longest, log_p.options()).view({1, longest, 1});
  at::Tensor kept = (rank >= quarter) & (rank < count - quarter);  // [B,P,1]
  at::Tensor sum = torch::logsumexp(sorted.masked_fill(~kept, -inf), /*dim=*/1);
  // The mean's divisor, n - 2q, is the same for every class: renormalizing removes it.
  return torch::log_softmax(sum, /*dim=*/1);
}

}  // namespace

FusionRuleInfo iqm_rule() {
  return fixed_rule(
      "iqm", "the interquartile mean of each class's patch probabilities, renormalized", fuse_iqm);
}

}  // namespace patchwise::detail
