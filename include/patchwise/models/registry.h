#pragma once
// The backbone registry: every network `make_backbone` can build, by name, with what
// the CLI and the docs say about it. A backbone lives in its own file under
// src/models/ and is added to the table in src/models/backbone.cpp by one line.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "patchwise/models/backbone.h"

namespace patchwise {

/// Where a backbone's batch normalization comes from.
enum class BatchNormUse {
  kOption,  ///< BackboneOptions::batch_norm (--batch-norm) adds it after every convolution
  kAlways,  ///< the network has it whatever the option says
};

/// One registered backbone.
struct BackboneInfo {
  std::string name;         ///< what --model takes and model files store
  std::string summary;      ///< one line: the layers, in the words of backbone.h
  int64_t min_input;        ///< the smallest input side it takes
  BatchNormUse batch_norm;  ///< whether BackboneOptions::batch_norm decides
  std::shared_ptr<BackboneImpl> (*make)(const BackboneOptions&);
  /// Multiply-adds of one forward pass over one [C,s,s] input.
  int64_t (*macs)(const BackboneOptions&);
  /// Another library's names for this network's layers (model/torch_import.h), or null:
  /// given a file's tensors and the backbone's own, by name, the file's layer prefixes
  /// onto the backbone's ("features.3." -> "conv.2.": torchvision's VGG).
  std::map<std::string, std::string> (*foreign_layers)(
      const std::map<std::string, at::Tensor>& file, const std::map<std::string, at::Tensor>& own);
};

/// Every registered backbone, in the order listings show them.
const std::vector<BackboneInfo>& backbones();
/// The registered names joined with ", " (for messages and --help).
std::string backbone_names();
/// The entry named `name`; OptionError("backbone", ...) listing the names otherwise.
const BackboneInfo& find_backbone(const std::string& name);
/// Whether the backbone `options` builds has batch normalization: then a training batch
/// must go through in one piece, for the statistics to be the whole batch's.
bool backbone_has_batch_norm(const BackboneOptions& options);
/// Trainable parameters of the backbone `options` builds.
int64_t backbone_parameters(const BackboneOptions& options);

}  // namespace patchwise
