#pragma once
// An exponential moving average of a model's parameters and buffers (Polyak averaging
// as timm's ModelEma): after each optimizer step, avg = d * avg + (1 - d) * weights with
// d = min(decay, (1 + n) / (10 + n)) after n updates, so that the first steps do not
// leave the average stuck at the initial weights. Integer buffers (batch counts) are
// copied, not averaged.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace patchwise {

class WeightAverage {
 public:
  /// Starts the average at copies of `state`; `decay` in (0, 1).
  WeightAverage(const std::vector<at::Tensor>& state, double decay);

  /// Moves the average towards `state` (the same tensors, in the same order).
  void update(const std::vector<at::Tensor>& state);

  const std::vector<at::Tensor>& average() const { return average_; }
  int64_t updates() const { return updates_; }
  /// The decay the next update uses.
  double next_decay() const;

  /// Restores a saved average (copied into the current tensors) and its update count.
  void restore(const std::vector<at::Tensor>& average, int64_t updates);

 private:
  std::vector<at::Tensor> average_;
  double decay_;
  int64_t updates_ = 0;
};

/// Throws InputError unless 0 <= decay < 1 (0: no average).
void check_ema_decay(double decay);

}  // namespace patchwise
