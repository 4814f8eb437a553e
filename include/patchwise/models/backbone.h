#pragma once
// Backbones: any network mapping a batch of patches [N,C,s,s] to logits [N,K],
// exposing its penultimate features [N,F] for learned fusion rules.
//
// small-cnn (the seed answer's network; 'valid' 3x3 convolutions, as Keras' default):
//   conv3x3 16, ReLU, maxpool 2 | conv3x3 32, ReLU, maxpool 2 | conv3x3 64, ReLU, maxpool 2
//   | flatten | dense 64, ReLU (= features) | dropout 0.5 | dense K
//   input 32: 32->30->15->13->6->4->2, flatten 64*2*2 = 256. Needs s >= 22.
// vgg16 (the question's network; 'same' 3x3 convolutions):
//   64,64 | 128,128 | 256,256,256 | 512,512,512 | 512,512,512, each block closed by a
//   2x2 max pool; global max pooling (Keras' pooling='max') (= features, F=512); dense K.
//   Needs s >= 32.
// Both take 1 or 3 input channels and optional batch normalization after each convolution.
// resnet20, resnet56, resnet18: residual networks for small inputs (src/models/resnet.cpp).
// The registry (models/registry.h) lists every backbone with its description.

#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "patchwise/models/backbone_options.h"

namespace patchwise {

class BackboneImpl : public torch::nn::Module {
 public:
  /// [N,C,s,s] -> [N,F], the penultimate features.
  virtual at::Tensor features(const at::Tensor& x) = 0;
  /// [N,F] -> [N,K] logits.
  virtual at::Tensor classify(const at::Tensor& features) = 0;
  /// F, the width of the features.
  virtual int64_t feature_dim() const = 0;
  /// The parameters of `classify` (the rest belong to `features`).
  virtual std::vector<at::Tensor> classifier_parameters() const = 0;

  at::Tensor forward(const at::Tensor& x) { return classify(features(x)); }
};

/// Builds the backbone named by options.name; throws InputError on an unregistered
/// name, a channel count other than 1 or 3, or an input too small for the network.
std::shared_ptr<BackboneImpl> make_backbone(const BackboneOptions& options);

/// Multiply-adds of one forward pass over one [C,s,s] input (for GFLOP/s figures).
int64_t backbone_forward_macs(const BackboneOptions& options);

}  // namespace patchwise
