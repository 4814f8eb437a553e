#include "patchwise/fusion/attention.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "patchwise/base/error.h"
#include "patchwise/models/backbone.h"
#include "rules.h"

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

Fused AttentionPoolImpl::fuse(
    const at::Tensor& features, const at::Tensor& mask, BackboneImpl& backbone) {
  Fused out;
  out.attention = weights(features, mask);
  out.log_probs = torch::log_softmax(backbone.classify(pool(features, out.attention)), /*dim=*/1);
  return out;
}

namespace detail {
namespace {

std::shared_ptr<FusionHeadImpl> make_attention(const FusionHeadOptions& o, bool gated) {
  check_option(o.hidden > 0, "attention_hidden", "{}, expected a positive width", o.hidden);
  check_option(
      !o.position_embedding || o.positions > 0,
      "position_embedding",
      "tiled models have no fixed tile positions, expected no position embedding");
  AttentionPoolOptions options;
  options.features = o.features;
  options.hidden = o.hidden;
  options.gated = gated;
  options.positions = o.position_embedding ? o.positions : 0;
  return std::make_shared<AttentionPoolImpl>(options);
}

}  // namespace

FusionRuleInfo attention_rule() {
  FusionRuleInfo r;
  r.name = "attention";
  r.summary = "learned weights over the patches (Ilse et al. 2018) pool their features";
  r.attention = true;
  r.make_head = [](const FusionHeadOptions& o) { return make_attention(o, /*gated=*/false); };
  r.module = "attention";
  return r;
}

FusionRuleInfo gated_attention_rule() {
  FusionRuleInfo r = attention_rule();
  r.name = "gated-attention";
  r.summary = "attention with a sigmoid gate on its hidden layer (Ilse et al. 2018)";
  r.make_head = [](const FusionHeadOptions& o) { return make_attention(o, /*gated=*/true); };
  return r;
}

}  // namespace detail
}  // namespace patchwise
