#include "patchwise/train/optimizer.h"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <cmath>

#include "patchwise/base/error.h"

namespace patchwise {
namespace {

/// The state of parameter `param` in `optimizer`, or null before its first step.
torch::optim::OptimizerParamState* find_state(
    torch::optim::Optimizer& optimizer, const at::Tensor& param) {
  auto it = optimizer.state().find(c10::guts::to_string(param.unsafeGetTensorImpl()));
  return it == optimizer.state().end() ? nullptr : it->second.get();
}

/// The tensor `key` of `state`, of `param`'s shape and type, on its device.
at::Tensor like_param(
    const TensorMap& state, const std::string& key, const at::Tensor& param,
    const std::string& path) {
  const at::Tensor& t = state_tensor(state, key, path);
  check_input(
      t.sizes() == param.sizes() && t.scalar_type() == param.scalar_type(),
      "{}: optimizer state '{}' does not match its parameter, expected its shape and type",
      path,
      key);
  return t.to(param.device()).clone();
}

/// Adam's and AdamW's state (the same four tensors) under "<prefix>.<i>.".
template <typename State>
void adam_to(
    torch::optim::Optimizer& optimizer, const std::string& prefix, const at::Tensor& param,
    TensorMap& out) {
  const auto* found = find_state(optimizer, param);
  if (found == nullptr) return;  // not stepped yet
  const auto& s = static_cast<const State&>(*found);
  out[prefix + "step"] = torch::tensor(s.step());
  out[prefix + "exp_avg"] = s.exp_avg();
  out[prefix + "exp_avg_sq"] = s.exp_avg_sq();
  if (s.max_exp_avg_sq().defined()) out[prefix + "max_exp_avg_sq"] = s.max_exp_avg_sq();
}

template <typename State>
void adam_from(
    torch::optim::Optimizer& optimizer, const std::string& prefix, const at::Tensor& param,
    const TensorMap& state, const std::string& path) {
  if (state.count(prefix + "step") == 0) return;
  auto s = std::make_unique<State>();
  const at::Tensor& step = state_tensor(state, prefix + "step", path);
  check_input(
      step.numel() == 1 && step.scalar_type() == at::kLong,
      "{}: optimizer state '{}step' is not a count, expected one int64",
      path,
      prefix);
  s->step(step.item<int64_t>());
  s->exp_avg(like_param(state, prefix + "exp_avg", param, path));
  s->exp_avg_sq(like_param(state, prefix + "exp_avg_sq", param, path));
  if (state.count(prefix + "max_exp_avg_sq") > 0) {
    s->max_exp_avg_sq(like_param(state, prefix + "max_exp_avg_sq", param, path));
  }
  optimizer.state()[c10::guts::to_string(param.unsafeGetTensorImpl())] = std::move(s);
}

void sgd_to(
    torch::optim::Optimizer& optimizer, const std::string& prefix, const at::Tensor& param,
    TensorMap& out) {
  const auto* found = find_state(optimizer, param);
  if (found == nullptr) return;  // plain SGD keeps none
  const auto& s = static_cast<const torch::optim::SGDParamState&>(*found);
  if (s.momentum_buffer().defined()) out[prefix + "momentum_buffer"] = s.momentum_buffer();
}

void sgd_from(
    torch::optim::Optimizer& optimizer, const std::string& prefix, const at::Tensor& param,
    const TensorMap& state, const std::string& path) {
  const std::string key = prefix + "momentum_buffer";
  if (state.count(key) == 0) return;
  auto s = std::make_unique<torch::optim::SGDParamState>();
  s->momentum_buffer(like_param(state, key, param, path));
  optimizer.state()[c10::guts::to_string(param.unsafeGetTensorImpl())] = std::move(s);
}

/// Calls fn(prefix, param) for every parameter of every group, prefix being
/// "<kind>.<i>." with i the parameter's position across the groups.
template <typename Fn>
void for_each_param(torch::optim::Optimizer& optimizer, OptimizerKind kind, Fn&& fn) {
  size_t i = 0;
  for (const auto& group : optimizer.param_groups()) {
    for (const at::Tensor& param : group.params()) {
      fn(optimizer_kind_name(kind) + "." + std::to_string(i++) + ".", param);
    }
  }
}

/// Weights of two or more dimensions, then the rest (biases, norms): split only when
/// `decay` is set, so that runs without it keep one group as before.
std::vector<torch::optim::OptimizerParamGroup> param_groups(
    const std::vector<at::Tensor>& params, double decay) {
  std::vector<at::Tensor> decayed, plain;
  for (const at::Tensor& p : params) (decay > 0 && p.dim() >= 2 ? decayed : plain).push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decayed.empty()) groups.emplace_back(decayed);
  if (!plain.empty()) groups.emplace_back(plain);
  return groups;
}

/// Gives each group its options: the defaults, with no weight decay for the second.
template <typename Options>
std::vector<torch::optim::OptimizerParamGroup> with_options(
    std::vector<torch::optim::OptimizerParamGroup> groups, const Options& defaults, bool split) {
  for (size_t g = 0; g < groups.size(); ++g) {
    auto options = std::make_unique<Options>(defaults);
    if (split && g == 1) options->weight_decay(0);
    groups[g].set_options(std::move(options));
  }
  return groups;
}

}  // namespace

OptimizerKind parse_optimizer_kind(const std::string& name) {
  if (name == "adam") return OptimizerKind::kAdam;
  if (name == "sgd") return OptimizerKind::kSgd;
  if (name == "adamw") return OptimizerKind::kAdamW;
  throw OptionError(
      "optimizer", fmt::format("unknown optimizer '{}', expected adam, adamw or sgd", name));
}

std::string optimizer_kind_name(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kAdam:
      return "adam";
    case OptimizerKind::kSgd:
      return "sgd";
    case OptimizerKind::kAdamW:
      return "adamw";
  }
  return "adam";
}

void check_optimizer_options(const OptimizerOptions& o) {
  check_option(o.lr > 0 && std::isfinite(o.lr), "lr", "{}, expected a positive number", o.lr);
  check_option(
      o.momentum >= 0 && o.momentum < 1, "momentum", "{}, expected 0 <= m < 1", o.momentum);
  check_option(
      o.kind == OptimizerKind::kSgd || o.momentum == 0,
      "momentum",
      "{}, only used by the sgd optimizer, not {}",
      o.momentum,
      optimizer_kind_name(o.kind));
  check_option(
      !o.nesterov || (o.kind == OptimizerKind::kSgd && o.momentum > 0),
      "nesterov",
      "with optimizer {} and momentum {}, expected sgd with a momentum above 0",
      optimizer_kind_name(o.kind),
      o.momentum);
  check_option(
      o.weight_decay >= 0 && o.weight_decay < 1,
      "weight-decay",
      "{}, expected 0 <= decay < 1",
      o.weight_decay);
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const std::vector<at::Tensor>& params, const OptimizerOptions& o) {
  namespace optim = torch::optim;
  check_optimizer_options(o);
  const bool split = o.weight_decay > 0;
  auto groups = param_groups(params, o.weight_decay);
  switch (o.kind) {
    case OptimizerKind::kSgd: {
      const auto options = optim::SGDOptions(o.lr)
                               .momentum(o.momentum)
                               .nesterov(o.nesterov)
                               .weight_decay(o.weight_decay);
      return std::make_unique<optim::SGD>(with_options(groups, options, split), options);
    }
    case OptimizerKind::kAdamW: {
      const auto options = optim::AdamWOptions(o.lr).weight_decay(o.weight_decay);
      return std::make_unique<optim::AdamW>(with_options(groups, options, split), options);
    }
    case OptimizerKind::kAdam:
      break;
  }
  const auto options = optim::AdamOptions(o.lr).weight_decay(o.weight_decay);
  return std::make_unique<optim::Adam>(with_options(groups, options, split), options);
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

TensorMap optimizer_state_to_tensors(torch::optim::Optimizer& optimizer, OptimizerKind kind) {
  TensorMap out;
  for_each_param(optimizer, kind, [&](const std::string& prefix, const at::Tensor& param) {
    switch (kind) {
      case OptimizerKind::kAdam:
        return adam_to<torch::optim::AdamParamState>(optimizer, prefix, param, out);
      case OptimizerKind::kAdamW:
        return adam_to<torch::optim::AdamWParamState>(optimizer, prefix, param, out);
      case OptimizerKind::kSgd:
        return sgd_to(optimizer, prefix, param, out);
    }
  });
  return out;
}

void optimizer_state_from_tensors(
    torch::optim::Optimizer& optimizer, OptimizerKind kind, const TensorMap& state,
    const std::string& path) {
  for_each_param(optimizer, kind, [&](const std::string& prefix, const at::Tensor& param) {
    switch (kind) {
      case OptimizerKind::kAdam:
        return adam_from<torch::optim::AdamParamState>(optimizer, prefix, param, state, path);
      case OptimizerKind::kAdamW:
        return adam_from<torch::optim::AdamWParamState>(optimizer, prefix, param, state, path);
      case OptimizerKind::kSgd:
        return sgd_from(optimizer, prefix, param, state, path);
    }
  });
}

}  // namespace patchwise
