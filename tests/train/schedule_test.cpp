// The learning-rate schedules (train/schedule.h) against their definitions: step decay,
// cosine after a linear warmup, one-cycle, and the numbers that make no sense refused.
#include "patchwise/train/schedule.h"

#include <gmock/gmock.h>

#include <cmath>
#include <cstdint>

#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

constexpr double kPi = 3.14159265358979323846;

class ScheduleTest : public test::SeededTest {};

TEST_F(ScheduleTest, StepScheduleDecaysEveryStepEpochs) {
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

TEST_F(ScheduleTest, CosineFallsFromTheRateAlongHalfACosineAfterItsWarmup) {
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

TEST_F(ScheduleTest, OneCycleClimbsFromAOneTwentyFifthAndEndsFarBelow) {
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

TEST_F(ScheduleTest, ScheduleNumbersThatMakeNoSenseAreRefused) {
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

}  // namespace
}  // namespace patchwise
