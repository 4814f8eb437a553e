#pragma once
// The trainer's one seam for data parallelism. Without a process group every call is
// the one-process case (a plain backward pass, nothing to sum); with one, each rank
// trains on its shard of every global batch and the Reducer averages the gradients.
// The trainer (train/trainer.cpp) never asks which case it is in.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

#include "patchwise/data/dataset.h"
#include "patchwise/data/loader.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/train/trainer.h"

namespace patchwise {

/// The running sums of an epoch that every rank contributes to.
struct EpochSums {
  double loss_sum = 0;  ///< sum over images of the batch's mean loss
  double correct = 0;   ///< images whose fused prediction was right
  int64_t seen = 0;     ///< images trained on
};

class Parallel {
 public:
  /// `distributed` may be null (one process). `eval_set` (may be null) is what the run
  /// evaluates after each epoch, `eval_bags` its bags for a tiled model.
  Parallel(Distributed* distributed, const Dataset* eval_set, BagFn eval_bags);

  int64_t rank() const { return rank_; }
  int64_t world() const { return world_; }

  /// As DDP starts: every rank continues from rank 0's weights and buffers, then the
  /// Reducer takes over the gradients. Fills result's data-parallel figures.
  void start(PatchClassifier& model, LossKind loss, TrainResult& result);
  /// The backward pass of one step: `loss` is this rank's mean loss over its `b` of
  /// the step's `rows` images (not called when b is 0). The Reducer averages the ranks'
  /// gradients, so each rank's loss is weighted by b * world / rows: the average is then
  /// the gradient of the mean over all rows, exactly one process's step.
  void backward(
      PatchClassifier& model, const std::function<at::Tensor()>& loss, int64_t b, int64_t rows,
      int64_t epoch, int64_t step);
  /// The largest stop signal of any rank: all stop after the same step.
  int stop_signal(int local, int64_t epoch, int64_t step);
  /// Sums the epoch's running sums over the ranks. `rank0_only`: a checkpoint's partial
  /// sums, kept by rank 0 alone so that the epoch's final sum counts them once.
  void reduce_sums(EpochSums& sums, bool rank0_only, int64_t epoch);
  /// The evaluation set's mean fused loss and accuracy; each rank scores a strided shard.
  std::pair<double, double> evaluate(PatchClassifier& model, int64_t batch, int64_t epoch);
  /// Waits for every rank and fills result's backward time.
  void finish(TrainResult& result);

 private:
  Distributed* dist_;
  int64_t world_ = 1;
  int64_t rank_ = 0;
  const Dataset* eval_set_;
  BagFn eval_bags_;
  Dataset eval_shard_;  ///< this rank's part of eval_set (data-parallel runs)
  double backward_seconds_ = 0;
  int64_t backward_steps_ = 0;
};

}  // namespace patchwise
