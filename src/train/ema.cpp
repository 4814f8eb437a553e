#include "patchwise/train/ema.h"

#include <torch/torch.h>

#include <algorithm>

#include "patchwise/base/error.h"

namespace patchwise {

WeightAverage::WeightAverage(const std::vector<at::Tensor>& state, double decay) : decay_(decay) {
  torch::NoGradGuard no_grad;
  average_.reserve(state.size());
  for (const at::Tensor& t : state) average_.push_back(t.detach().clone());
}

double WeightAverage::next_decay() const {
  const auto n = static_cast<double>(updates_);
  return std::min(decay_, (1 + n) / (10 + n));
}

void WeightAverage::update(const std::vector<at::Tensor>& state) {
  torch::NoGradGuard no_grad;
  const double d = next_decay();
  for (size_t i = 0; i < average_.size(); ++i) {
    if (at::isFloatingType(average_[i].scalar_type())) {
      average_[i].lerp_(state[i].detach(), 1 - d);
    } else {
      average_[i].copy_(state[i]);
    }
  }
  ++updates_;
}

void WeightAverage::restore(const std::vector<at::Tensor>& average, int64_t updates) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < average_.size(); ++i) average_[i].copy_(average[i]);
  updates_ = updates;
}

void check_ema_decay(double decay) {
  check_option(decay >= 0 && decay < 1, "ema", "{}, expected 0 <= decay < 1 (0: off)", decay);
}

}  // namespace patchwise
