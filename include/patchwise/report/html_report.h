#pragma once
// One self-contained HTML report of a model on a labelled set: no network access
// needed, every image inline (PNG, base64).
//
// Sections: summary; training curves (loss and accuracy, train and test, as inline
// SVG, from the model file's history; a note when it has none); accuracy per fusion
// rule and per patch position; the confusion matrix with class names; a gallery of
// images, each with its patches, the per-patch probabilities and the fused decision;
// the most confident mistakes; heatmaps of a few images.

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "patchwise/data/dataset.h"
#include "patchwise/data/region.h"
#include "patchwise/model/patch_classifier.h"

namespace patchwise {

struct ReportOptions {
  std::string title = "patchwise report";
  std::string model_path;      ///< shown in the summary
  int64_t gallery = 12;        ///< images in the gallery (the first ones of the set)
  int64_t mistakes = 8;        ///< most confident mistakes shown
  int64_t heatmaps = 4;        ///< images with a heatmap
  int64_t heatmap_stride = 2;  ///< stride of the heatmaps' sliding patch
  int64_t batch = 256;
};

/// Builds the report; `training` is the model file's "training" section (null: none).
std::string build_html_report(
    PatchClassifier& model, const Dataset& data, const nlohmann::json& training,
    const ReportOptions& options);

/// The report of a tiled model on a set of large images (`data`: their files and
/// labels). One pass over every image's bag gives the accuracy, the confusion matrix and
/// each tile's score (its attention weight, or for a fixed rule its probability of the
/// predicted class); the gallery and the most confident mistakes show each image's
/// thumbnail with the scores over it, a colour bar, its top tiles as crops and its fused
/// probabilities. `reader` opens the images. Sections not meaningful for bags (fusion
/// rules, patch positions, sliding heatmaps) are left out.
std::string build_bag_report(
    PatchClassifier& model, const Dataset& data, const nlohmann::json& training,
    const ReportOptions& options, const RegionReaderOptions& reader = {});

/// Standard base64 of `bytes` (RFC 4648, with padding).
std::string base64_encode(const std::string& bytes);

}  // namespace patchwise
