#pragma once
// Attention-based multiple-instance pooling (Ilse, Tomczak, Welling 2018), the
// learned fusion rules. With h_i [F] the backbone features of patch i:
//   attention       : e_i = w^T tanh(V h_i)
//   gated-attention : e_i = w^T (tanh(V h_i) * sigmoid(U h_i))
//   a = softmax_i(e)            weights over the patches, [B,P], sum to 1
//   z = sum_i a_i h_i           the image's features, [B,F]
// The image's logits are the backbone's own classifier applied to z, so every
// patch and the image share one head. V, U: [L,F], w: [L] (L = hidden, 128 by default).
// Optionally a learned embedding per patch position is added to h_i before scoring
// (only to the scores: z still pools the raw features).

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

#include "patchwise/fusion/registry.h"

namespace patchwise {

struct AttentionPoolOptions {
  int64_t features = 64;  ///< F, the backbone's feature width
  int64_t hidden = 128;   ///< L, the attention's hidden width
  bool gated = false;     ///< gated-attention
  int64_t positions = 0;  ///< P; > 0 adds a learned embedding per patch position
};

/// The head of the attention and gated-attention rules (fusion/registry.h).
class AttentionPoolImpl : public FusionHeadImpl {
 public:
  explicit AttentionPoolImpl(const AttentionPoolOptions& options);

  /// The weights, and the backbone's classifier on the pooled features.
  Fused fuse(const at::Tensor& features, const at::Tensor& mask, BackboneImpl& backbone) override;

  /// features [B,P,F] -> weights a [B,P] (softmax over P). With `mask` bool [B,P] (bags
  /// padded to P, fusion.h), the softmax runs over each bag's real tiles and the padding
  /// weighs exactly 0.
  at::Tensor weights(const at::Tensor& features, const at::Tensor& mask = {});
  /// features [B,P,F], weights [B,P] -> pooled features z [B,F].
  static at::Tensor pool(const at::Tensor& features, const at::Tensor& weights);

  const AttentionPoolOptions& options() const { return options_; }

 private:
  AttentionPoolOptions options_;
  at::Tensor v_;         ///< [L,F]
  at::Tensor v_bias_;    ///< [L]
  at::Tensor u_;         ///< [L,F], gated only
  at::Tensor u_bias_;    ///< [L], gated only
  at::Tensor w_;         ///< [L]
  at::Tensor position_;  ///< [P,F] when positions > 0
};

TORCH_MODULE(AttentionPool);

}  // namespace patchwise
