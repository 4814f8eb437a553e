#pragma once
// Model files: one file holding the configuration (JSON) and the weights.
//
//   bytes 0..7   "PATCHWSE"                  (kModelMagic)
//   bytes 8..15  uint64 little-endian n      (length of the JSON)
//   next n bytes JSON: {"format": "patchwise-model", "format_version": 2, "image": {...},
//                "grid": {...}, "backbone": {...}, "fusion": "mean", "classes": [...],
//                "normalization": {...}, "training": {...}}
//   then         LibTorch's serialized archive of parameters and buffers
//   last 8 bytes "PWCK" and the uint32 little-endian CRC-32 (zlib's) of every byte
//                before them (format version 2 on; version 1 files have no trailer)
//
// Files are written under a temporary name in the same folder and renamed, so a
// crash never leaves a half-written model. Loading checks the checksum before
// parsing anything, runs nothing from the file, and copies each weight into a
// tensor of the shape the configuration implies only after checking the stored
// tensor's shape, type and extent: a file that declares absurd sizes is refused
// without allocating for them.

#include <functional>
#include <string>

#include <nlohmann/json_fwd.hpp>
#include <torch/serialize/archive.h>

#include "patchwise/core/patch_classifier.h"

namespace patchwise {

constexpr char kModelMagic[] = "PATCHWSE";
constexpr char kChecksumTag[] = "PWCK";
constexpr int kModelFormatVersion = 2;
/// Files of version 1 (no checksum) are still read.
constexpr int kOldestModelFormatVersion = 1;

nlohmann::json model_config_to_json(const ModelConfig& config);
/// Throws InputError naming `source` when a field is missing or has the wrong type.
ModelConfig model_config_from_json(const nlohmann::json& json, const std::string& source);

/// Extra entries of the weights archive (a training checkpoint's optimizer and RNG state).
using ArchiveWriter = std::function<void(torch::serialize::OutputArchive&)>;
using ArchiveReader = std::function<void(torch::serialize::InputArchive&)>;

/// Writes `model` (moved to the CPU for writing) with `training` (any JSON: options,
/// per-epoch history) and `extra` archive entries atomically to `path`. Throws
/// InputError when it cannot be written.
void save_model(const std::string& path, PatchClassifier& model, const nlohmann::json& training,
                const ArchiveWriter& extra = {});

/// Opens the weights archive of a model file and hands it to `reader`; failures of
/// the file or of the reader become InputError naming `path`.
void read_model_archive(const std::string& path, const ArchiveReader& reader);

/// Reads a model file; throws InputError on a missing, foreign, corrupt or
/// other-version file. The model is on the CPU, in evaluation mode.
PatchClassifier load_model(const std::string& path);
/// The "training" section of a model file (null JSON when absent).
nlohmann::json load_model_training(const std::string& path);

}  // namespace patchwise
