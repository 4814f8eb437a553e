// Label smoothing in the losses (train/loss.h) against PyTorch's cross-entropy and the
// fused loss's definition, and smoothing values out of range refused.
#include "patchwise/train/loss.h"

#include <gmock/gmock.h>
#include <torch/torch.h>

#include "patchwise/model/patch_classifier.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

class LossTest : public test::SeededTest {};

TEST_F(LossTest, LabelSmoothingMatchesPyTorchsCrossEntropy) {
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

}  // namespace
}  // namespace patchwise
