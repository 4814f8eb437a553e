#pragma once
// PatchClassifier: grid + backbone + fusion in one module, the artefact that is
// trained, saved, loaded and served.
//
//   images uint8 or float [B,C,H,W]
//     -> normalize (uint8 only: (x/255 - mean[c]) / std[c])
//     -> PatchGrid::cut            [B,P,C,I,I]
//     -> backbone on B*P patches   features [B,P,F], logits [B,P,K]
//     -> fuse                      log-probabilities [B,K]
//        fixed rules fuse the patch logits; learned rules fuse the features: attention
//        and gated-attention pool them with weights [B,P] and apply the backbone's
//        head, concat applies a linear head of its own to them side by side (fusion.h).
//
// Tiled models (config.tiled) take large images as bags of tiles: the caller cuts each
// image's kept tiles (patch/tiles.h) and resizes them to the backbone's input, and
// forward_bags runs the backbone over all the tiles of a batch of bags at once and
// fuses each bag over its own tiles (fusion.h, bags). `forward` on a tiled model treats
// each image as a bag of one tile.

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "patchwise/base/precision.h"
#include "patchwise/data/dataset.h"
#include "patchwise/fusion/fusion.h"
#include "patchwise/models/backbone_options.h"
#include "patchwise/patch/grid.h"
#include "patchwise/patch/tiles.h"

namespace patchwise {

class BackboneImpl;    // models/backbone.h: include it to call the backbone
class FusionHeadImpl;  // fusion/registry.h

/// Everything needed to rebuild a PatchClassifier; stored as JSON in model files.
struct ModelConfig {
  int64_t image_channels = 1;  ///< C of the images the model takes
  int64_t image_h = 28;        ///< H
  int64_t image_w = 28;        ///< W
  PatchGridOptions grid;
  BackboneOptions backbone;
  FusionRule fusion = FusionRule::kMean;
  int64_t attention_hidden = 128;        ///< L of the learned fusion rules
  bool position_embedding = false;       ///< learned per-position embedding in attention
  std::vector<std::string> class_names;  ///< K names
  Normalization normalization;           ///< per image channel
  bool tiled = false;  ///< images are bags of tiles (see above); the grid is then one
                       ///< patch of the backbone's input, and image_h = image_w = input
  TileOptions tiles;   ///< how a tiled model's images are cut
};

struct PatchOutput {
  at::Tensor patch_logits;  ///< [B,P,K]
  at::Tensor features;      ///< [B,P,F], the backbone's penultimate features
  at::Tensor log_probs;     ///< [B,K], fused
  at::Tensor attention;     ///< [B,P], the learned rules' patch weights (undefined otherwise)
  at::Tensor mask;          ///< bool [B,P] for bags of different sizes padded to P: the
                            ///< real tiles; undefined when every row is a full bag
};

class PatchClassifierImpl : public torch::nn::Module {
 public:
  /// Throws InputError when the configuration cannot be built (see PatchGrid, make_backbone).
  explicit PatchClassifierImpl(const ModelConfig& config);

  /// Whole images in, per-patch logits and fused log-probabilities out.
  PatchOutput forward(const at::Tensor& images);
  /// Bags of tiles in: `tiles` uint8 or float [N,C,I,I] at the backbone's input size,
  /// bag b's counts[b] >= 1 tiles after bag b-1's. Out: [B,P,...] padded to the largest
  /// bag, with PatchOutput::mask when the bags differ. `tiles` may instead be the
  /// tiles' backbone features, float [N,F] (a feature cache, patch/feature_cache.h):
  /// the backbone's feature layers are then skipped.
  PatchOutput forward_bags(const at::Tensor& tiles, const std::vector<int64_t>& counts);
  /// The backbone's features of tiles [N,C,I,I] (uint8 normalized first): [N,F].
  at::Tensor tile_features(const at::Tensor& tiles);
  /// Per-patch logits, attention and fused output of features [B,P,F] (mask as in PatchOutput).
  PatchOutput head(const at::Tensor& features, const at::Tensor& mask = {});
  /// From now on only the head learns (the attention and the backbone's classifier, as
  /// when training on a feature cache): the backbone's feature layers stop requiring
  /// gradients.
  void freeze_features();
  /// The parameters whose shapes follow the classes: the backbone's classifier and, under
  /// concat fusion, its head. Attention does not depend on the classes.
  std::vector<at::Tensor> class_head_parameters() const;
  /// The parameters that require gradients: all of them, or the head's after freeze_features.
  std::vector<at::Tensor> trainable_parameters() const;
  /// Evaluates with another rule from now on: any fixed rule, or the model's own.
  /// Throws InputError for a learned rule the model was not trained with.
  void set_fusion(FusionRule rule);
  /// uint8 [B,C,H,W] -> normalized float [B,C,H,W] on the module's device.
  at::Tensor normalize(const at::Tensor& images) const;
  /// The arithmetic of the backbone's feature layers from now on (precision.h); its
  /// features come out in float32 whatever it is. A runtime setting, not saved.
  void set_precision(Precision p) { precision_ = p; }
  Precision precision() const { return precision_; }

  const ModelConfig& config() const { return config_; }
  const PatchGrid& grid() const { return grid_; }
  BackboneImpl& backbone() { return *backbone_; }
  const BackboneImpl& backbone() const { return *backbone_; }
  int64_t num_patches() const { return grid_.count(); }
  int64_t num_classes() const { return config_.backbone.num_classes; }
  /// Where the parameters live.
  c10::Device device() const { return mean_.device(); }

 private:
  /// The learned rules' modules (constructor).
  void add_fusion_head();
  /// backbone_->features(x) at precision_, in float32.
  at::Tensor backbone_features(const at::Tensor& x);

  ModelConfig config_;
  PatchGrid grid_;
  std::shared_ptr<BackboneImpl> backbone_;
  Precision precision_ = Precision::kFloat32;
  FusionRule trained_fusion_;
  std::shared_ptr<FusionHeadImpl> fusion_head_;  ///< a learned rule's (fusion/registry.h)
  at::Tensor mean_;                              ///< buffer [1,C,1,1]
  at::Tensor std_;                               ///< buffer [1,C,1,1]
};

TORCH_MODULE(PatchClassifier);

/// Throws InputError naming data.source when the images' size or channels differ from
/// the model's or a label is outside [0, K). A tiled model takes images of any size.
void check_dataset_fits(const ModelConfig& config, const Dataset& data);

}  // namespace patchwise
