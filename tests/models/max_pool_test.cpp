#include "patchwise/models/max_pool.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/test_support.h"

namespace patchwise {
namespace {

class MaxPoolTest : public test::SeededTest {};

/// Values and input gradient of `pool` for `x` and an upstream gradient `g`.
std::pair<at::Tensor, at::Tensor> run(
    at::Tensor x, const at::Tensor& g, at::Tensor (*pool)(const at::Tensor&)) {
  x = x.detach().clone().requires_grad_(true);
  at::Tensor y = pool(x);
  y.backward(g);
  return {y.detach(), x.grad()};
}

at::Tensor aten_pool(const at::Tensor& x) { return torch::max_pool2d(x, 2); }

TEST_F(MaxPoolTest, MatchesAtenBitForBitOnEvenOddTiedAndNanInputs) {
  std::vector<at::Tensor> inputs = {
      torch::randn({3, 5, 30, 30}),                             // even sides
      torch::randn({2, 4, 13, 13}),                             // odd sides: last row/col dropped
      torch::randn({1, 2, 7, 4}, torch::kFloat64),              // double, rectangular
      torch::randint(0, 3, {2, 3, 8, 10}).to(torch::kFloat32),  // many ties
      torch::zeros({1, 1, 6, 6}),                               // all tied
  };
  at::Tensor nan = torch::randn({2, 2, 6, 6});
  nan.index_put_({0, 0, 0, 1}, NAN);
  nan.index_put_({1, 1, 3, 2}, NAN);
  nan.index_put_({1, 1, 3, 3}, NAN);  // two NaNs in one window
  inputs.push_back(nan);
  for (const at::Tensor& x : inputs) {
    at::Tensor g = torch::randn({x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2}, x.options());
    auto [ours, our_grad] = run(x, g, max_pool_2x2);
    auto [theirs, their_grad] = run(x, g, aten_pool);
    EXPECT_TRUE(torch::equal(ours.isnan(), theirs.isnan())) << x.sizes();
    EXPECT_TRUE(torch::equal(ours.nan_to_num(0), theirs.nan_to_num(0))) << x.sizes();
    EXPECT_TRUE(torch::equal(our_grad, their_grad)) << x.sizes();
  }
}

TEST_F(MaxPoolTest, ChannelsLastAndViewsGiveTheSameAsContiguous) {
  at::Tensor x = torch::randn({2, 3, 10, 12});
  at::Tensor expected = torch::max_pool2d(x, 2);
  EXPECT_TRUE(torch::equal(max_pool_2x2(x.contiguous(at::MemoryFormat::ChannelsLast)), expected));
  at::Tensor wide = torch::randn({2, 3, 10, 20});
  at::Tensor view = wide.narrow(3, 4, 12);
  EXPECT_TRUE(torch::equal(max_pool_2x2(view), torch::max_pool2d(view, 2)));
}

TEST_F(MaxPoolTest, WithoutGradientItKeepsNoIndicesAndStillAgrees) {
  torch::InferenceMode guard;
  at::Tensor x = torch::randn({4, 8, 15, 15});
  EXPECT_TRUE(torch::equal(max_pool_2x2(x), torch::max_pool2d(x, 2)));
}

}  // namespace
}  // namespace patchwise
