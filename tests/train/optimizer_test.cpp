// The optimizers (train/optimizer.h) against their updates: AdamW's weight decay spares
// biases and norms, and SGD with Nesterov momentum steps as its definition says.
#include "patchwise/train/optimizer.h"

#include <torch/torch.h>

#include "support/test_support.h"

namespace patchwise {
namespace {

class OptimizerTest : public test::SeededTest {};

TEST_F(OptimizerTest, WeightDecaySparesBiasesAndNorms) {
  at::Tensor weight = torch::ones({3, 2}, torch::requires_grad());
  at::Tensor bias = torch::ones({3}, torch::requires_grad());
  auto optimizer = make_optimizer({weight, bias}, {OptimizerKind::kAdamW, 0.1, 0, false, 0.5});
  ASSERT_EQ(optimizer->param_groups().size(), 2u);
  // A zero gradient: AdamW's decoupled decay alone moves the weight, w *= 1 - lr * wd.
  weight.mutable_grad() = torch::zeros_like(weight);
  bias.mutable_grad() = torch::zeros_like(bias);
  optimizer->step();
  // Float32: 1 * (1 - 0.1 * 0.5) is one rounding of 0.95 (ulp 6e-8), as torch::full's is;
  // Adam's own step is 0 / (0 + eps) = 0 exactly, so the bias is untouched.
  EXPECT_TRUE(torch::allclose(weight, torch::full({3, 2}, 0.95), 0, 1e-7));
  EXPECT_TRUE(torch::equal(bias, torch::ones({3})));
  // Without decay the groups stay one, as before weight decay existed.
  EXPECT_EQ(
      make_optimizer({weight, bias}, {OptimizerKind::kAdamW, 0.1})->param_groups().size(), 1u);
}

TEST_F(OptimizerTest, NesterovStepsByTheGradientPlusMomentumTimesTheNewBuffer) {
  at::Tensor w = torch::zeros({4}, torch::dtype(torch::kFloat64).requires_grad(true));
  auto optimizer = make_optimizer({w}, {OptimizerKind::kSgd, 0.1, 0.9, true});
  const at::Tensor g = torch::tensor({1.0, -2.0, 0.5, 0.0}, torch::kFloat64);
  w.mutable_grad() = g.clone();
  // Float64, g's entries powers of two: both sides round 0.9 g, 1.9 g and their sums
  // (at most 5.4) and multiply by 0.1, about ten roundings of u = 2^-53 each that add up
  // to under 8e-16 on w (at most 0.92), below 1e-15.
  optimizer->step();  // buffer = g; w -= lr * (g + 0.9 * g)
  EXPECT_TRUE(torch::allclose(w, -0.1 * 1.9 * g, 0, 1e-15));
  optimizer->step();  // buffer = 0.9 g + g; w -= lr * (g + 0.9 * 1.9 g)
  EXPECT_TRUE(torch::allclose(w, -0.1 * (1.9 + 1 + 0.9 * 1.9) * g, 0, 1e-15));
}

}  // namespace
}  // namespace patchwise
