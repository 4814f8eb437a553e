// The training recipe's parts, each against its definition: schedules, parameter
// groups and the optimizers' updates, label smoothing, the moving average, random
// erasing, gradient clipping and bfloat16 autocast.
#include <ATen/autocast_mode.h>
#include <gmock/gmock.h>
#include <torch/torch.h>

#include <cmath>

#include "patchwise/base/precision.h"
#include "patchwise/data/augment.h"
#include "patchwise/train/ema.h"
#include "patchwise/train/loss.h"
#include "patchwise/train/optimizer.h"
#include "patchwise/train/schedule.h"
#include "patchwise/train/trainer.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

constexpr double kPi = 3.14159265358979323846;

class RecipeTest : public test::SeededTest {};

TEST_F(RecipeTest, StepScheduleDecaysEveryStepEpochs) {
  ScheduleOptions o;
  o.kind = ScheduleKind::kStep;
  o.step_epochs = 2;
  o.gamma = 0.1;
  // 10 steps per epoch, 6 epochs. pow(0.1, 0) is 1 and pow(0.1, 1) is 0.1 exactly;
  // pow(0.1, 2) is within 2 ulps of 0.01 (ulp 1.7e-18), far inside 1e-15.
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 1.0, 0, 60, 10), 1.0);
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 1.0, 19, 60, 10), 1.0);
  EXPECT_NEAR(scheduled_lr(o, 1.0, 20, 60, 10), 0.1, 1e-15);
  EXPECT_NEAR(scheduled_lr(o, 1.0, 59, 60, 10), 0.01, 1e-15);
}

TEST_F(RecipeTest, CosineFallsFromTheRateAlongHalfACosineAfterItsWarmup) {
  ScheduleOptions o;
  o.kind = ScheduleKind::kCosine;
  o.warmup_epochs = 1;  // 10 steps
  // The ramp and the peak are exact: cos(0) = 1, and both sides divide the same products
  // by 10. Half way, cos(kPi / 2) = 6e-17 rather than 0 (kPi is rounded), and the last
  // step's cosines take kPi * 0.99 and kPi * 99 / 100: a few ulps of 1 (2.2e-16) apart,
  // far inside 1e-12.
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 2.0, 0, 110, 10), 2.0 * 1 / 10);  // linear ramp
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 2.0, 4, 110, 10), 2.0 * 5 / 10);
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 2.0, 10, 110, 10), 2.0);    // the peak right after it
  EXPECT_NEAR(scheduled_lr(o, 2.0, 60, 110, 10), 1.0, 1e-12);  // half way: half the rate
  const double last = scheduled_lr(o, 2.0, 109, 110, 10);
  EXPECT_NEAR(last, 2.0 * 0.5 * (1 + std::cos(kPi * 99 / 100)), 1e-12);
  EXPECT_GT(last, 0);
  // Consecutive rates differ by at least 1 - cos(kPi / 100) = 4.9e-4, far above rounding.
  for (int64_t s = 11; s < 110; ++s) {
    EXPECT_LT(scheduled_lr(o, 2.0, s, 110, 10), scheduled_lr(o, 2.0, s - 1, 110, 10)) << s;
  }
}

TEST_F(RecipeTest, OneCycleClimbsFromAOneTwentyFifthAndEndsFarBelow) {
  ScheduleOptions o;
  o.kind = ScheduleKind::kOneCycle;  // warmup: 30 of 100 steps
  // Each end is to + (from - to) * 0.5 * (1 + cos), cos = 1 or -1 exactly (cos(kPi) rounds
  // to -1): two roundings of values at most 1, within 2.2e-16; 1e-15 leaves a factor 4.
  EXPECT_NEAR(scheduled_lr(o, 1.0, 0, 100, 10), 1.0 / 25, 1e-15);  // a cosine at 0: rounding
  EXPECT_NEAR(scheduled_lr(o, 1.0, 30, 100, 10), 1.0, 1e-15);
  EXPECT_NEAR(scheduled_lr(o, 1.0, 99, 100, 10), 1.0 / 25e4, 1e-15);
  EXPECT_LT(scheduled_lr(o, 1.0, 15, 100, 10), 1.0);
  EXPECT_GT(scheduled_lr(o, 1.0, 15, 100, 10), 1.0 / 25);
}

TEST_F(RecipeTest, ScheduleNumbersThatMakeNoSenseAreRefused) {
  ScheduleOptions o;
  o.warmup_epochs = 5;
  EXPECT_THAT(
      test::input_error([&] { check_schedule_options(o, 5); }),
      HasSubstr("warmup: 5 epochs, expected fewer than the run's 5 epochs"));
  o.warmup_epochs = -1;
  o.gamma = 1.5;
  EXPECT_THAT(
      test::input_error([&] { check_schedule_options(o, 5); }),
      HasSubstr("lr-gamma: 1.5, expected 0 < gamma <= 1"));
  EXPECT_THAT(
      test::input_error([] { parse_schedule_kind("linear"); }),
      HasSubstr("unknown schedule 'linear', expected constant, step, cosine or onecycle"));
}

TEST_F(RecipeTest, WeightDecaySparesBiasesAndNorms) {
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

TEST_F(RecipeTest, NesterovStepsByTheGradientPlusMomentumTimesTheNewBuffer) {
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

TEST_F(RecipeTest, LabelSmoothingMatchesPyTorchsCrossEntropy) {
  PatchOutput out;
  out.patch_logits = torch::randn({3, 4, 5}, torch::kFloat64);
  out.log_probs = torch::log_softmax(out.patch_logits.mean(1), 1);
  const at::Tensor labels = torch::tensor({1, 4, 0}, torch::kInt64);
  const at::Tensor reference = at::cross_entropy_loss(
      out.patch_logits.flatten(0, 1),
      labels.repeat_interleave(4),
      {},
      at::Reduction::Mean,
      -100,
      0.2);
  // The same sums in another order: a few ulps of values near 1.
  EXPECT_NEAR(
      compute_loss(LossKind::kPatch, out, labels, 0.2).item<double>(),
      reference.item<double>(),
      1e-12);
  const double fused =
      (0.8 * -out.log_probs.gather(1, labels.unsqueeze(1)).mean() - 0.2 * out.log_probs.mean())
          .item<double>();
  // The same for the fused loss: sums of 3 rows of 5 log-probabilities.
  EXPECT_NEAR(compute_loss(LossKind::kFused, out, labels, 0.2).item<double>(), fused, 1e-12);
  EXPECT_THAT(
      test::input_error([] { check_label_smoothing(1.0); }),
      HasSubstr("label-smoothing: 1, expected 0 <= e < 1"));
}

TEST_F(RecipeTest, TheMovingAverageFollowsItsDecayAndCopiesCounts) {
  at::Tensor w = torch::zeros({2}, torch::kFloat64);
  at::Tensor count = torch::zeros({}, torch::kInt64);
  WeightAverage average({w, count}, 0.5);
  // next_decay's min picks either 1.0 / 10.0 or the 0.5 set, both exactly these doubles.
  EXPECT_DOUBLE_EQ(average.next_decay(), 0.1);  // (1 + 0) / (10 + 0) below 0.5
  w.fill_(10);
  count.fill_(1);
  average.update({w, count});  // 0.1 * 0 + 0.9 * 10
  // A lerp with weight 0.9 rounds 0.9 and one product: within a few ulps of 9 (1.8e-15),
  // far inside allclose's default rtol 1e-5.
  EXPECT_TRUE(torch::allclose(average.average()[0], torch::full({2}, 9.0, torch::kFloat64)));
  EXPECT_EQ(average.average()[1].item<int64_t>(), 1);
  for (int i = 0; i < 20; ++i) average.update({w, count});
  EXPECT_DOUBLE_EQ(average.next_decay(), 0.5);  // (1 + 21) / (10 + 21) above 0.5
  w.fill_(0);
  const double before = average.average()[0][0].item<double>();
  average.update({w, count});
  // A lerp with weight 0.5 to 0 halves the average exactly: 0 - (0 - a) * 0.5.
  EXPECT_NEAR(average.average()[0][0].item<double>(), 0.5 * before, 1e-12);
  EXPECT_EQ(average.updates(), 22);
}

TEST_F(RecipeTest, RandomErasingFillsOneRectangleOfTwoToThirtyThreePercent) {
  const at::Tensor images = torch::zeros({64, 1, 20, 20}, torch::kUInt8);
  AugmentOptions o;
  o.erase = 1;
  const at::Tensor out = augment_images(images, o);
  EXPECT_EQ(images.sum().item<int64_t>(), 0);  // the input stays as it was
  int64_t erased = 0;
  for (int64_t b = 0; b < 64; ++b) {
    const at::Tensor changed = out[b][0].ne(0).nonzero();
    if (changed.size(0) == 0) continue;  // no rectangle fitted in ten tries
    ++erased;
    const auto lo = std::get<0>(changed.min(0));
    const auto hi = std::get<0>(changed.max(0));
    const int64_t area = (hi[0].item<int64_t>() - lo[0].item<int64_t>() + 1) *
                         (hi[1].item<int64_t>() - lo[1].item<int64_t>() + 1);
    // Noise equal to 0 at an edge can shrink the box a little: within a row and column.
    EXPECT_LE(area, 0.33 * 400 + 2 * 20 + 1) << b;
    EXPECT_GE(static_cast<double>(changed.size(0)), 0.02 * 400 * 0.5) << b;
  }
  EXPECT_GT(erased, 48);
  o.erase = 0;
  EXPECT_TRUE(torch::equal(augment_images(images, o), images));
}

TEST_F(RecipeTest, ClippingBoundsEachStepOfPlainSgd) {
  // 4 classes of random images; SGD at lr 1 clipped to norm 1e-3 moves the weights by
  // at most 1e-3 per step, 8 steps in all.
  Dataset train;
  train.labels = torch::randint(0, 4, {64}, torch::kInt64);
  train.images = torch::randint(0, 256, {64, 1, 28, 28}, torch::kUInt8);
  train.class_names = {"a", "b", "c", "d"};
  train.source = "noise";
  ModelConfig config;
  config.class_names = train.class_names;
  config.backbone.num_classes = 4;
  config.backbone.dropout = 0;
  config.normalization = compute_normalization(train.images);
  PatchClassifier model(config);
  std::vector<at::Tensor> before;
  for (const auto& p : model->parameters()) before.push_back(p.detach().clone());
  TrainerOptions options;
  options.epochs = 1;
  options.batch = 8;
  options.optimizer = {OptimizerKind::kSgd, 1.0};
  options.clip_grad_norm = 1e-3;
  train_model(model, train, nullptr, options);
  double squared = 0;
  const auto after = model->parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    squared += (after[i] - before[i]).to(torch::kDouble).pow(2).sum().item<double>();
  }
  EXPECT_GT(std::sqrt(squared), 0);
  // Float32 (u = 2^-24): a clipped step is 1e-3 up to a few u of its norm and scale, and
  // adding it rounds each weight by up to u |w|: u ||w|| = 4.6e-7 = 4.6e-4 of a step, with
  // ||w||^2 = 60 (Linear and Conv2d start uniform within 1/sqrt(fan_in): outputs / 3 per
  // layer, 16 + 32 + 64 + 64 + 4 outputs). The differences (one rounding, u of their size)
  // are squared and summed in double.
  EXPECT_LE(std::sqrt(squared), 8 * 1e-3 * (1 + 1e-3));
}

TEST_F(RecipeTest, PrecisionNamesParseAndOthersAreRefused) {
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

TEST_F(RecipeTest, AutocastScopesNestAndRestoreTheThreadsState) {
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
TEST_F(RecipeTest, ABf16ConvolutionStaysWithinItsRoundingBound) {
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
TEST_F(RecipeTest, ABf16ModelTrainsInFloat32AndSeesEachWeightUpdate) {
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
