#include "patchwise/fusion/attention.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace patchwise {

AttentionPoolImpl::AttentionPoolImpl(const AttentionPoolOptions& o) : options_(o) {
  TORCH_CHECK(o.features > 0 && o.hidden > 0, "AttentionPool: features and hidden must be > 0");
  // Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch::nn::Linear initializes.
  auto init = [](std::initializer_list<int64_t> shape, int64_t fan_in) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    return torch::empty(shape).uniform_(-bound, bound);
  };
  v_ = register_parameter("V", init({o.hidden, o.features}, o.features));
  v_bias_ = register_parameter("V_bias", init({o.hidden}, o.features));
  if (o.gated) {
    u_ = register_parameter("U", init({o.hidden, o.features}, o.features));
    u_bias_ = register_parameter("U_bias", init({o.hidden}, o.features));
  }
  w_ = register_parameter("w", init({o.hidden}, o.hidden));
  if (o.positions > 0) {
    position_ = register_parameter("position", torch::zeros({o.positions, o.features}));
  }
}

at::Tensor AttentionPoolImpl::weights(const at::Tensor& features, const at::Tensor& mask) {
  TORCH_CHECK(
      features.dim() == 3 && features.size(2) == options_.features,
      "AttentionPool expects features [B,P,",
      options_.features,
      "], got ",
      features.sizes());
  at::Tensor h = features;
  if (position_.defined()) {
    TORCH_CHECK(
        features.size(1) == options_.positions,
        "AttentionPool: ",
        features.size(1),
        " patches, embedding has ",
        options_.positions,
        " positions");
    h = h + position_.unsqueeze(0);
  }
  at::Tensor hidden = torch::tanh(torch::nn::functional::linear(h, v_, v_bias_));  // [B,P,L]
  if (options_.gated) {
    hidden = hidden * torch::sigmoid(torch::nn::functional::linear(h, u_, u_bias_));
  }
  at::Tensor scores = torch::matmul(hidden, w_);  // [B,P]
  if (mask.defined()) {
    TORCH_CHECK(
        mask.sizes() == scores.sizes() && mask.scalar_type() == torch::kBool,
        "AttentionPool: mask must be bool ",
        scores.sizes(),
        ", got ",
        mask.sizes());
    scores = scores.masked_fill(~mask, -std::numeric_limits<double>::infinity());
  }
  return torch::softmax(scores, /*dim=*/1);
}

at::Tensor AttentionPoolImpl::pool(const at::Tensor& features, const at::Tensor& weights) {
  return (features * weights.unsqueeze(2)).sum(1);
}

}  // namespace patchwise
