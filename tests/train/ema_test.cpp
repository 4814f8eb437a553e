// The moving average of the weights (train/ema.h): its decay's warm-up, the lerp it
// applies, and the integer buffers it copies.
#include "patchwise/train/ema.h"

#include <torch/torch.h>

#include "support/test_support.h"

namespace patchwise {
namespace {

class EmaTest : public test::SeededTest {};

TEST_F(EmaTest, TheMovingAverageFollowsItsDecayAndCopiesCounts) {
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

}  // namespace
}  // namespace patchwise
