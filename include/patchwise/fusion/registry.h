#pragma once
// The fusion registry: every rule `--fusion` takes, by name, with what it needs. A rule
// lives in its own file under src/fusion/ and is added to the table in
// src/fusion/registry.cpp by one line (and its declaration in src/fusion/rules.h).
// A fixed rule is a function of the patches' log-probabilities; a learned rule is a head
// (a module of PatchClassifier, its one member for fusion) over the patches' features.

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "patchwise/fusion/fusion.h"

namespace patchwise {

class BackboneImpl;  // models/backbone.h

/// What a learned rule's head is built for.
struct FusionHeadOptions {
  int64_t features = 64;            ///< F, the backbone's feature width
  int64_t classes = 10;             ///< K
  int64_t positions = 0;            ///< P of a fixed grid; 0: bags of tiles, no positions
  int64_t hidden = 128;             ///< L, the hidden width (attention)
  bool position_embedding = false;  ///< a learned embedding per grid position (attention)
};

/// A learned rule's answer for a batch of bags.
struct Fused {
  at::Tensor log_probs;  ///< [B,K]
  at::Tensor attention;  ///< [B,P] weights over the patches; undefined for other heads
};

/// A learned rule's parameters and its fusion.
class FusionHeadImpl : public torch::nn::Module {
 public:
  /// features [B,P,F] -> Fused; `mask` bool [B,P] marks the real tiles of padded bags
  /// (undefined: full bags); `backbone` classifies pooled features where the rule does.
  virtual Fused fuse(
      const at::Tensor& features, const at::Tensor& mask, BackboneImpl& backbone) = 0;
  /// The parameters whose shapes follow the classes (none unless the head classifies).
  virtual std::vector<at::Tensor> class_parameters() const { return {}; }
};

/// One registered rule.
struct FusionRuleInfo {
  std::string name;              ///< what --fusion takes and model files store
  std::string summary;           ///< one line, for listings
  bool differentiable = true;    ///< a loss on the fused output trains through it
  bool needs_positions = false;  ///< weights per grid position: fixed grids only
  bool attention = false;        ///< weighs the patches (Fused::attention)
  /// A fixed rule: log-probabilities [B,P,K] -> [B,K]; `mask` as in FusionHeadImpl::fuse.
  at::Tensor (*fuse)(const at::Tensor& log_p, const at::Tensor& mask) = nullptr;
  /// A learned rule: its head (OptionError for options it cannot take), registered in
  /// the model under `module`, which names its weights in model files.
  std::shared_ptr<FusionHeadImpl> (*make_head)(const FusionHeadOptions& options) = nullptr;
  std::string module;

  bool learned() const { return make_head != nullptr; }
};

/// The registered rules; FusionRule::index() is a position here. New rules go at the end,
/// so that the named rules keep their indices.
const std::vector<FusionRuleInfo>& fusion_rules();
/// The entry of `rule`.
const FusionRuleInfo& fusion_rule_info(FusionRule rule);

}  // namespace patchwise
