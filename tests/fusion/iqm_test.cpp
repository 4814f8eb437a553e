// iqm (src/fusion/iqm.cpp): the interquartile mean of each class's patch probabilities,
// checked against the definition computed patch by patch in float64.

#include <gmock/gmock.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "patchwise/fusion/fusion.h"
#include "patchwise/patch/bags.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

class IqmTest : public test::SeededTest {};

const FusionRule kIqm = parse_fusion_rule("iqm");

/// The definition for one bag of logits [n,K]: sort each class's probabilities, drop
/// floor(n/4) at each end, average the rest, renormalize.
std::vector<double> iqm_of(const at::Tensor& logits) {
  at::Tensor p = torch::softmax(logits.to(torch::kFloat64), 1);
  const int64_t n = p.size(0), classes = p.size(1), q = n / 4;
  std::vector<double> out(static_cast<size_t>(classes));
  double total = 0;
  for (int64_t k = 0; k < classes; ++k) {
    std::vector<double> column;
    for (int64_t i = 0; i < n; ++i) column.push_back(p[i][k].item<double>());
    std::sort(column.begin(), column.end());
    double sum = 0;
    for (int64_t r = q; r < n - q; ++r) sum += column[static_cast<size_t>(r)];
    out[static_cast<size_t>(k)] = sum / static_cast<double>(n - 2 * q);
    total += out[static_cast<size_t>(k)];
  }
  for (double& v : out) v /= total;
  return out;
}

// Both sides round a few float64 operations on values of order 1 (softmax, a sum of at
// most 9 terms, a log and an exp): each within a few u = 2^-53 = 1.1e-16; 1e-12 is
// hundreds of times their sum.
TEST_F(IqmTest, EachBagIsTheMeanOfItsMiddleHalfRenormalized) {
  for (int64_t n : {1, 2, 3, 4, 5, 8, 9}) {
    at::Tensor logits = torch::randn({1, n, 4}, torch::kFloat64) * 3;
    at::Tensor fused = fuse(kIqm, logits).exp()[0];
    const std::vector<double> expected = iqm_of(logits[0]);
    for (int64_t k = 0; k < 4; ++k) {
      EXPECT_NEAR(fused[k].item<double>(), expected[static_cast<size_t>(k)], 1e-12) << n;
    }
  }
}

TEST_F(IqmTest, OneStrayPatchOfFourCannotCarryTheDecision) {
  // Three patches lean to class 0 (0.6), one is sure of class 1 (0.999): the mean picks
  // class 1 (0.55 against 0.45), the interquartile mean class 0 (0.6 against 0.4).
  const double lean = std::log(0.6 / 0.4), sure = std::log(0.999 / 0.001);
  at::Tensor logits =
      torch::tensor({lean, 0.0, lean, 0.0, lean, 0.0, 0.0, sure}, torch::kFloat64).view({1, 4, 2});
  EXPECT_EQ(fuse(FusionRule::kMean, logits).argmax(1).item<int64_t>(), 1);
  EXPECT_EQ(fuse(kIqm, logits).argmax(1).item<int64_t>(), 0);
}

TEST_F(IqmTest, PaddedBagsFuseAsEachBagAloneWithAFiniteGradient) {
  const std::vector<int64_t> counts = {5, 1, 8};
  at::Tensor flat = (torch::randn({14, 3}, torch::kFloat64) * 2).requires_grad_();
  PaddedBags bags = pad_bags(flat, counts);
  at::Tensor fused = fuse(kIqm, bags.values, bags.mask);
  int64_t start = 0;
  for (size_t b = 0; b < counts.size(); ++b) {
    at::Tensor alone = fuse(kIqm, flat.narrow(0, start, counts[b]).unsqueeze(0));
    // The same operations on the same values, but over padded rows: equal within the
    // roundings of a logsumexp over a few more (-inf) terms.
    EXPECT_TRUE(torch::allclose(fused[static_cast<int64_t>(b)], alone[0], 1e-12, 1e-12)) << b;
    start += counts[b];
  }
  fused.sum().backward();
  EXPECT_TRUE(torch::isfinite(flat.grad()).all().item<bool>());
  EXPECT_GT(flat.grad().abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace patchwise
