#include "patchwise/train/optimizer.h"

#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include <cmath>

#include "patchwise/core/error.h"

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

void adam_to(
    torch::optim::Optimizer& optimizer, size_t i, const at::Tensor& param, TensorMap& out) {
  const auto* found = find_state(optimizer, param);
  if (found == nullptr) return;  // not stepped yet
  const auto& s = static_cast<const torch::optim::AdamParamState&>(*found);
  const std::string prefix = "adam." + std::to_string(i) + ".";
  out[prefix + "step"] = torch::tensor(s.step());
  out[prefix + "exp_avg"] = s.exp_avg();
  out[prefix + "exp_avg_sq"] = s.exp_avg_sq();
  if (s.max_exp_avg_sq().defined()) out[prefix + "max_exp_avg_sq"] = s.max_exp_avg_sq();
}

void adam_from(
    torch::optim::Optimizer& optimizer, size_t i, const at::Tensor& param, const TensorMap& state,
    const std::string& path) {
  const std::string prefix = "adam." + std::to_string(i) + ".";
  if (state.count(prefix + "step") == 0) return;
  auto s = std::make_unique<torch::optim::AdamParamState>();
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

void sgd_to(torch::optim::Optimizer& optimizer, size_t i, const at::Tensor& param, TensorMap& out) {
  const auto* found = find_state(optimizer, param);
  if (found == nullptr) return;  // plain SGD keeps none
  const auto& s = static_cast<const torch::optim::SGDParamState&>(*found);
  if (s.momentum_buffer().defined()) {
    out["sgd." + std::to_string(i) + ".momentum_buffer"] = s.momentum_buffer();
  }
}

void sgd_from(
    torch::optim::Optimizer& optimizer, size_t i, const at::Tensor& param, const TensorMap& state,
    const std::string& path) {
  const std::string key = "sgd." + std::to_string(i) + ".momentum_buffer";
  if (state.count(key) == 0) return;
  auto s = std::make_unique<torch::optim::SGDParamState>();
  s->momentum_buffer(like_param(state, key, param, path));
  optimizer.state()[c10::guts::to_string(param.unsafeGetTensorImpl())] = std::move(s);
}

}  // namespace

OptimizerKind parse_optimizer_kind(const std::string& name) {
  if (name == "adam") return OptimizerKind::kAdam;
  if (name == "sgd") return OptimizerKind::kSgd;
  throw OptionError("optimizer", fmt::format("unknown optimizer '{}', expected adam or sgd", name));
}

std::string optimizer_kind_name(OptimizerKind kind) {
  return kind == OptimizerKind::kAdam ? "adam" : "sgd";
}

void check_optimizer_options(const OptimizerOptions& o) {
  check_option(o.lr > 0 && std::isfinite(o.lr), "lr", "{}, expected a positive number", o.lr);
  check_option(o.momentum >= 0 && o.momentum < 1, "momentum", "{}, expected 0 <= m < 1", o.momentum);
  check_option(
      o.kind == OptimizerKind::kSgd || o.momentum == 0,
      "momentum",
      "{}, only used by the sgd optimizer, not adam",
      o.momentum);
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const std::vector<at::Tensor>& params, const OptimizerOptions& o) {
  check_optimizer_options(o);
  if (o.kind == OptimizerKind::kSgd) {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(o.lr).momentum(o.momentum));
  }
  return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(o.lr));
}

TensorMap optimizer_state_to_tensors(torch::optim::Optimizer& optimizer, OptimizerKind kind) {
  TensorMap out;
  const auto& params = optimizer.param_groups().at(0).params();
  for (size_t i = 0; i < params.size(); ++i) {
    if (kind == OptimizerKind::kAdam)
      adam_to(optimizer, i, params[i], out);
    else
      sgd_to(optimizer, i, params[i], out);
  }
  return out;
}

void optimizer_state_from_tensors(
    torch::optim::Optimizer& optimizer, OptimizerKind kind, const TensorMap& state,
    const std::string& path) {
  const auto& params = optimizer.param_groups().at(0).params();
  for (size_t i = 0; i < params.size(); ++i) {
    if (kind == OptimizerKind::kAdam)
      adam_from(optimizer, i, params[i], state, path);
    else
      sgd_from(optimizer, i, params[i], state, path);
  }
}

}  // namespace patchwise
