#include "patchwise/train/parallel.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <chrono>

#include "patchwise/dist/distributed.h"
#include "patchwise/fusion/fusion.h"
#include "patchwise/model/evaluation.h"

namespace patchwise {
namespace {

/// Items shard, shard + shards, ... of `data`: one rank's part of an evaluation set.
Dataset strided_shard(const Dataset& data, int64_t shard, int64_t shards) {
  std::vector<int64_t> index;
  for (int64_t i = shard; i < data.size(); i += shards) index.push_back(i);
  return subset(data, index);
}

/// A zero that depends on every parameter: a rank with none of a batch's images still
/// gives the Reducer every gradient (zero), so that it joins the same allreduces.
at::Tensor zero_objective(PatchClassifier& model) {
  at::Tensor objective = torch::zeros({}, torch::TensorOptions().device(model->device()));
  for (const auto& p : model->trainable_parameters()) objective = objective + p.sum() * 0.0;
  return objective;
}

}  // namespace

Parallel::Parallel(Distributed* distributed, const Dataset* eval_set, BagFn eval_bags)
    : dist_(distributed),
      world_(distributed != nullptr ? distributed->world_size() : 1),
      rank_(distributed != nullptr ? distributed->rank() : 0),
      eval_set_(eval_set),
      eval_bags_(std::move(eval_bags)) {}

void Parallel::start(PatchClassifier& model, LossKind loss, TrainResult& result) {
  if (dist_ == nullptr) return;
  std::vector<at::Tensor> state = model->parameters();
  for (const auto& t : model->buffers()) state.push_back(t);
  dist_->broadcast(state);
  std::vector<at::Tensor> trainable;
  std::vector<std::string> names;
  for (const auto& item : model->named_parameters()) {
    if (!item.value().requires_grad()) continue;  // frozen (a feature cache's backbone)
    trainable.push_back(item.value());
    names.push_back(item.key());
  }
  // The fused loss through a learned rule leaves the patch-logit layer out of the graph.
  const bool find_unused =
      loss == LossKind::kFused && fusion_rule_is_learned(model->config().fusion);
  dist_->attach_gradients(trainable, names, find_unused);
  for (const auto& p : trainable) result.gradient_floats += p.numel();
  result.gradient_buckets = dist_->buckets();
  result.allreduce_ms = dist_->time_allreduce(result.gradient_floats, 20);
  if (eval_set_ == nullptr) return;
  eval_shard_ = strided_shard(*eval_set_, rank_, world_);
  if (eval_bags_) {  // the shard's item i is the set's rank + i * world
    eval_bags_ = [bags = eval_bags_, rank = rank_, world = world_](int64_t i) {
      return bags(rank + i * world);
    };
  }
}

void Parallel::backward(
    PatchClassifier& model, const std::function<at::Tensor()>& loss, int64_t b, int64_t rows,
    int64_t epoch, int64_t step) {
  if (dist_ == nullptr) {
    loss().backward();
    return;
  }
  dist_->before_forward();
  at::Tensor objective = b > 0 ? loss() : zero_objective(model);
  if (b > 0 && b * world_ != rows) objective = objective * (static_cast<double>(b * world_) / rows);
  dist_->before_backward(objective);
  const auto start = std::chrono::steady_clock::now();
  dist_->guard(fmt::format("the backward pass of epoch {} step {}", epoch, step + 1), [&] {
    objective.backward();
  });
  backward_seconds_ +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++backward_steps_;
}

int Parallel::stop_signal(int local, int64_t epoch, int64_t step) {
  if (dist_ == nullptr) return local;
  return static_cast<int>(dist_->allreduce_max(
      local, fmt::format("the step-end allreduce of epoch {} step {}", epoch, step)));
}

void Parallel::reduce_sums(EpochSums& sums, bool rank0_only, int64_t epoch) {
  if (dist_ == nullptr) return;
  at::Tensor values =
      torch::tensor({sums.loss_sum, sums.correct, static_cast<double>(sums.seen)}, torch::kFloat64);
  dist_->allreduce_sum(values, fmt::format("the sums of the metrics of epoch {}", epoch));
  const bool keep = rank_ == 0 || !rank0_only;
  sums.loss_sum = keep ? values[0].item<double>() : 0;
  sums.correct = keep ? values[1].item<double>() : 0;
  sums.seen = keep ? std::llround(values[2].item<double>()) : 0;
}

std::pair<double, double> Parallel::evaluate(PatchClassifier& model, int64_t batch, int64_t epoch) {
  if (dist_ == nullptr) {
    Evaluation e = patchwise::evaluate(model, *eval_set_, batch, false, eval_bags_);
    return {e.loss, e.accuracy};
  }
  at::Tensor sums = torch::zeros({3}, torch::kFloat64);
  if (eval_shard_.size() > 0) {
    Evaluation e = patchwise::evaluate(model, eval_shard_, batch, false, eval_bags_);
    const double n = static_cast<double>(e.n);
    sums = torch::tensor({n, e.loss * n, e.accuracy * n}, torch::kFloat64);
  }
  dist_->allreduce_sum(sums, fmt::format("the evaluation after epoch {}", epoch));
  const double n = sums[0].item<double>();
  return {sums[1].item<double>() / n, sums[2].item<double>() / n};
}

void Parallel::finish(TrainResult& result) {
  if (dist_ == nullptr) return;
  dist_->barrier();  // nobody leaves while a peer still needs it
  result.backward_ms =
      1000.0 * backward_seconds_ / static_cast<double>(std::max<int64_t>(backward_steps_, 1));
}

}  // namespace patchwise
