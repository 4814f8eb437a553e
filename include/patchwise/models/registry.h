#pragma once
// The backbone registry: every network `make_backbone` can build, by name, with what
// the CLI and the docs say about it. A backbone lives in its own file under
// src/models/ and is added to the table in src/models/backbone.cpp by one line.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "patchwise/models/backbone.h"

namespace patchwise {

/// One registered backbone.
struct BackboneInfo {
  std::string name;             ///< what --model takes and model files store
  std::string summary;          ///< one line: the layers, in the words of backbone.h
  int64_t min_input;            ///< the smallest input side it takes
  bool uses_batch_norm_option;  ///< false: the network fixes batch norm itself
  bool uses_dropout_option;     ///< false: the network has no dropout
  std::shared_ptr<BackboneImpl> (*make)(const BackboneOptions&);
  /// Multiply-adds of one forward pass over one [C,s,s] input.
  int64_t (*macs)(const BackboneOptions&);
};

/// Every registered backbone, in the order listings show them.
const std::vector<BackboneInfo>& backbones();
/// The registered names joined with ", " (for messages and --help).
std::string backbone_names();
/// The entry named `name`; OptionError("backbone", ...) listing the names otherwise.
const BackboneInfo& find_backbone(const std::string& name);
/// Trainable parameters of the backbone `options` builds.
int64_t backbone_parameters(const BackboneOptions& options);

}  // namespace patchwise
