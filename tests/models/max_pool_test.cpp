#include "patchwise/models/max_pool.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "patchwise/base/runtime.h"
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
    // Exact: pooling selects a value (both keep the first of tied ones, or a NaN), and as
    // 2x2 windows do not overlap each input receives one gradient value or none, no sum.
    EXPECT_TRUE(torch::equal(ours.isnan(), theirs.isnan())) << x.sizes();
    EXPECT_TRUE(torch::equal(ours.nan_to_num(0), theirs.nan_to_num(0))) << x.sizes();
    EXPECT_TRUE(torch::equal(our_grad, their_grad)) << x.sizes();
  }
}

TEST_F(MaxPoolTest, ChannelsLastAndViewsGiveTheSameAsContiguous) {
  at::Tensor x = torch::randn({2, 3, 10, 12});
  at::Tensor expected = torch::max_pool2d(x, 2);
  // Selection is exact in any layout or view.
  EXPECT_TRUE(torch::equal(max_pool_2x2(x.contiguous(at::MemoryFormat::ChannelsLast)), expected));
  at::Tensor wide = torch::randn({2, 3, 10, 20});
  at::Tensor view = wide.narrow(3, 4, 12);
  EXPECT_TRUE(torch::equal(max_pool_2x2(view), torch::max_pool2d(view, 2)));
}

TEST_F(MaxPoolTest, WithoutGradientItKeepsNoIndicesAndStillAgrees) {
  torch::InferenceMode guard;
  at::Tensor x = torch::randn({4, 8, 15, 15});
  EXPECT_TRUE(torch::equal(max_pool_2x2(x), torch::max_pool2d(x, 2)));  // selection: exact
}

}  // namespace

/// Values, the gradients of x, weight and bias, and the layer's running statistics
/// after one training step of batch norm then 2x2 pooling, fused or as two layers.
struct BatchNormPoolRun {
  at::Tensor y, dx, dweight, dbias, running_mean, running_var, batches;
};

BatchNormPoolRun run_batch_norm_pool(const at::Tensor& x, const at::Tensor& g, bool fused) {
  torch::nn::BatchNorm2d bn(x.size(1));
  bn->to(x.scalar_type());
  {
    torch::NoGradGuard no_grad;  // some negative scales: the window's minimum is kept
    bn->weight.copy_(torch::linspace(-1.5, 2.0, x.size(1), x.options()));
    bn->bias.copy_(torch::linspace(0.5, -0.5, x.size(1), x.options()));
  }
  bn->train();
  at::Tensor input = x.detach().clone().requires_grad_(true);
  const BatchNormState state{
      bn->weight,
      bn->bias,
      bn->running_mean,
      bn->running_var,
      bn->num_batches_tracked,
      bn->options.momentum(),
      bn->options.eps()};
  at::Tensor y = fused ? batch_norm_max_pool_2x2(input, state) : max_pool_2x2(bn->forward(input));
  y.backward(g);
  return {
      y.detach(),
      input.grad(),
      bn->weight.grad(),
      bn->bias.grad(),
      bn->running_mean.clone(),
      bn->running_var.clone(),
      bn->num_batches_tracked.clone()};
}

void expect_close(const at::Tensor& a, const at::Tensor& b, double bound, const char* what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  EXPECT_LE((a - b).abs().max().item<double>(), bound) << what;
}

// The fused layer sums the batch's statistics and gradients in another order than
// ATen: in double, with at most 2,700 values of magnitude below 6 per channel, each
// sum differs by at most 2,700 * 6 * 2.2e-16 = 4e-12 relative to its terms, which the
// normalization (1 / std, about 1 here) and the gradient's terms carry over: 1e-9
// leaves a margin of 250. Random normal values have no ties, so the kept positions agree.
TEST_F(MaxPoolTest, FusedBatchNormPoolMatchesTheTwoLayersInDouble) {
  for (std::vector<int64_t> shape :
       {std::vector<int64_t>{3, 4, 30, 30}, {5, 3, 13, 13}, {2, 6, 4, 5}}) {
    at::Tensor x = torch::randn(shape, torch::kFloat64) * 2 + 1;
    at::Tensor g = torch::randn({shape[0], shape[1], shape[2] / 2, shape[3] / 2}, x.options());
    BatchNormPoolRun fused = run_batch_norm_pool(x, g, true);
    BatchNormPoolRun layers = run_batch_norm_pool(x, g, false);
    expect_close(fused.y, layers.y, 1e-9, "values");
    expect_close(fused.dx, layers.dx, 1e-9, "input gradient");
    expect_close(fused.dweight, layers.dweight, 1e-9, "weight gradient");
    expect_close(fused.dbias, layers.dbias, 1e-9, "bias gradient");
    expect_close(fused.running_mean, layers.running_mean, 1e-9, "running mean");
    expect_close(fused.running_var, layers.running_var, 1e-9, "running variance");
    EXPECT_TRUE(torch::equal(fused.batches, layers.batches));  // an integer count
  }
}

// In float the same sums carry 6e-8 instead of 2.2e-16: the worst case of 2,700 * 6 *
// 6e-8 = 1e-3 bounds the difference (in practice it is far smaller).
TEST_F(MaxPoolTest, FusedBatchNormPoolMatchesTheTwoLayersInFloat) {
  at::Tensor x = torch::randn({3, 16, 30, 30});
  at::Tensor g = torch::randn({3, 16, 15, 15});
  BatchNormPoolRun fused = run_batch_norm_pool(x, g, true);
  BatchNormPoolRun layers = run_batch_norm_pool(x, g, false);
  expect_close(fused.y, layers.y, 1e-3, "values");
  expect_close(fused.dx, layers.dx, 1e-3, "input gradient");
  expect_close(fused.dweight / 2700, layers.dweight / 2700, 1e-3, "weight gradient per value");
  expect_close(fused.dbias / 2700, layers.dbias / 2700, 1e-3, "bias gradient per value");
}

TEST_F(MaxPoolTest, FusedBatchNormPoolRefusesASingleValuePerChannel) {
  torch::nn::BatchNorm2d bn(2);
  const BatchNormState state{
      bn->weight, bn->bias, bn->running_mean, bn->running_var, bn->num_batches_tracked, 0.1, 1e-5};
  EXPECT_THROW(batch_norm_max_pool_2x2(torch::randn({1, 2, 1, 1}), state), c10::Error);
}

// The kernels' files are compiled with -fopenmp (CMakeLists.txt): without it
// at::parallel_for silently runs on one thread, and these kernels lost half the cores.
TEST_F(MaxPoolTest, KernelFilesSplitTheirWorkOverTheThreads) {
  const int before = at::get_num_threads();
  set_threads(2);
  EXPECT_EQ(kernel_threads_used(), 2);
  set_threads(before);
}

}  // namespace patchwise
