// Precision (base/precision.h): the names, autocast scopes, a bfloat16 convolution within
// its rounding bound, and a bfloat16 model that trains in float32 and sees its updates.
#include "patchwise/base/precision.h"

#include <ATen/autocast_mode.h>
#include <gmock/gmock.h>
#include <torch/torch.h>

#include <cmath>

#include "patchwise/base/error.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/train/loss.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

class PrecisionTest : public test::SeededTest {};

TEST_F(PrecisionTest, PrecisionNamesParseAndOthersAreRefused) {
  EXPECT_EQ(parse_precision("fp32"), Precision::kFloat32);
  EXPECT_EQ(parse_precision("bf16"), Precision::kBFloat16);
  EXPECT_STREQ(precision_name(Precision::kBFloat16), "bf16");
  try {
    parse_precision("fp16");
    FAIL() << "fp16 accepted";
  } catch (const OptionError& e) {
    EXPECT_THAT(e.what(), HasSubstr("'fp16' is not a precision, expected fp32 or bf16"));
  }
}

TEST_F(PrecisionTest, AutocastScopesNestAndRestoreTheThreadsState) {
  ASSERT_FALSE(at::autocast::is_cpu_enabled());
  {
    AutocastScope fp32(Precision::kFloat32);
    EXPECT_FALSE(at::autocast::is_cpu_enabled());
  }
  {
    AutocastScope outer(Precision::kBFloat16);
    EXPECT_TRUE(at::autocast::is_cpu_enabled());
    EXPECT_EQ(at::autocast::get_autocast_cpu_dtype(), at::kBFloat16);
    {
      AutocastScope inner(Precision::kBFloat16);
      EXPECT_TRUE(at::autocast::is_cpu_enabled());
    }
    EXPECT_TRUE(at::autocast::is_cpu_enabled());  // the outer scope still holds
    EXPECT_EQ(torch::mm(torch::ones({2, 2}), torch::ones({2, 2})).scalar_type(), at::kBFloat16);
  }
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
  EXPECT_EQ(torch::mm(torch::ones({2, 2}), torch::ones({2, 2})).scalar_type(), at::kFloat);
}

// Under autocast x and w are rounded to bfloat16 (unit roundoff u = 2^-8), multiplied
// exactly in float32, summed over K = 27 terms in float32 and the sum rounded to
// bfloat16: |y~ - y| <= (2u + u^2 + K 2^-23) sum|x||w| + u |b| + u |y~|.
TEST_F(PrecisionTest, ABf16ConvolutionStaysWithinItsRoundingBound) {
  const at::Tensor x = torch::randn({2, 3, 8, 8});
  const at::Tensor w = torch::randn({4, 3, 3, 3});
  const at::Tensor b = torch::randn({4});
  at::Tensor approx;
  {
    AutocastScope bf16(Precision::kBFloat16);
    approx = torch::conv2d(x, w, b, 1, 1);
  }
  ASSERT_EQ(approx.scalar_type(), at::kBFloat16);
  const at::Tensor y = torch::conv2d(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble), 1, 1);
  const at::Tensor magnitude =
      torch::conv2d(x.abs().to(at::kDouble), w.abs().to(at::kDouble), {}, 1, 1);
  const double u = std::ldexp(1.0, -8);
  const at::Tensor got = approx.to(at::kDouble);
  const at::Tensor bound = (2 * u + u * u + 27 * std::ldexp(1.0, -23)) * magnitude +
                           u * b.abs().to(at::kDouble).view({1, 4, 1, 1}) + u * got.abs();
  const at::Tensor error = (got - y).abs();
  EXPECT_TRUE(error.le(bound).all().item<bool>()) << (error - bound).max().item<double>();
  // In float32 the error would stay under 27 * 2^-24 of sums of magnitudes below ~40
  // (6e-5); rounding 512 outputs of order 5 to bfloat16 (u = 2^-8) leaves errors near 1e-2.
  EXPECT_GT(error.max().item<double>(), 1e-4);  // it did run in bfloat16
}

// The casts of the weights are cached within one autocast region, as in PyTorch: a
// forward pass after an optimizer step must see the new weights, not the cached copy.
TEST_F(PrecisionTest, ABf16ModelTrainsInFloat32AndSeesEachWeightUpdate) {
  PatchClassifier model(test::gray_config("resnet20", FusionRule::kMean));
  model->set_precision(Precision::kBFloat16);
  const at::Tensor images = torch::randint(0, 256, {4, 1, 28, 28}, torch::kUInt8);
  PatchOutput out = model->forward(images);
  EXPECT_EQ(out.patch_logits.scalar_type(), at::kFloat);
  EXPECT_EQ(out.log_probs.scalar_type(), at::kFloat);
  compute_loss(LossKind::kPatch, out, torch::tensor({0, 1, 2, 3})).backward();
  for (const auto& p : model->named_parameters()) {
    EXPECT_EQ(p.value().scalar_type(), at::kFloat) << p.key();
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_EQ(p.value().grad().scalar_type(), at::kFloat) << p.key();
  }
  model->eval();
  const at::Tensor before = model->forward(images).patch_logits.detach();
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.mul_(0.5);
  }
  const at::Tensor after = model->forward(images).patch_logits.detach();
  // Not rounding: halved weights change the logits by far more than bfloat16's rounding.
  EXPECT_FALSE(torch::equal(before, after));
  model->set_precision(Precision::kFloat32);
  const at::Tensor fp32 = model->forward(images).patch_logits.detach();
  EXPECT_EQ(fp32.scalar_type(), at::kFloat);
  EXPECT_FALSE(torch::equal(after, fp32));  // bf16 differs from fp32 in rounding
}

}  // namespace
}  // namespace patchwise
