#pragma once
// The optimizers the trainer steps with, and their state as named tensors for
// checkpoints:
//   adam  : Adam (PyTorch's defaults: betas 0.9, 0.999, eps 1e-8), the default; its
//           weight decay is L2 added to the gradient
//   adamw : Adam with decoupled weight decay (Loshchilov & Hutter)
//   sgd   : stochastic gradient descent, with optional (heavy-ball or Nesterov) momentum
// Weight decay never applies to biases and normalization parameters (every parameter of
// one dimension): they go into a second parameter group without it.
// Plain SGD moves each weight by lr times its gradient, so two computations of the
// same gradient that differ by rounding end with weights that differ by rounding;
// Adam divides by the gradient's running RMS and can magnify such differences in
// weights whose gradient is near zero.

#include <memory>
#include <string>
#include <vector>

#include "patchwise/model/model_file.h"

namespace torch::optim {
class Optimizer;
}

namespace patchwise {

enum class OptimizerKind { kAdam, kSgd, kAdamW };

/// "adam", "sgd", "adamw"; throws InputError otherwise.
OptimizerKind parse_optimizer_kind(const std::string& name);
std::string optimizer_kind_name(OptimizerKind kind);

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::kAdam;
  double lr = 1e-3;         ///< learning rate (the schedule's peak)
  double momentum = 0;      ///< sgd only: 0 is plain SGD
  bool nesterov = false;    ///< sgd only: Nesterov momentum (needs momentum > 0)
  double weight_decay = 0;  ///< on weights of two or more dimensions only
};

/// Throws InputError for a rate that is not positive and finite, a momentum outside
/// [0, 1), a momentum or Nesterov given to Adam, Nesterov without momentum, or a
/// negative weight decay.
void check_optimizer_options(const OptimizerOptions& options);

/// The optimizer over `params`: one group, or with weight decay two (the decayed
/// weights, then the biases and norms without decay).
std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const std::vector<at::Tensor>& params, const OptimizerOptions& options);

/// Sets the learning rate of every group of `optimizer`.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

/// The optimizer's per-parameter state ("adam.<i>.step", ".exp_avg", ...;
/// "sgd.<i>.momentum_buffer"), i being the parameter's position across the groups.
TensorMap optimizer_state_to_tensors(torch::optim::Optimizer& optimizer, OptimizerKind kind);

/// Restores what optimizer_state_to_tensors saved, checking every tensor against its
/// parameter; `path` names the checkpoint in errors.
void optimizer_state_from_tensors(
    torch::optim::Optimizer& optimizer, OptimizerKind kind, const TensorMap& state,
    const std::string& path);

}  // namespace patchwise
