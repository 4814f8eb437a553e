#pragma once
// Model files: one file holding the configuration (JSON) and the weights.
//
//   bytes 0..7   "PATCHWSE"                  (kModelMagic)
//   bytes 8..15  uint64 n                    (length of the JSON)
//   next n bytes JSON: {"format": "patchwise-model", "format_version": 2, "image": {...},
//                "grid": {...}, "backbone": {...}, "fusion": "mean", "classes": [...],
//                "normalization": {...}, "training": {...}}
//   then         uint32 count, then `count` tensor records:
//                uint16 name length, the name ("model/<parameter or buffer>" or
//                "state/<key>"), uint8 type (1 float32, 2 float64, 3 int64, 4 uint8),
//                uint8 dims (at most 8), uint64 size per dim, the elements
//   last 8 bytes "PWCK" and the uint32 CRC-32 (zlib's) of every byte before them
// Integers are little-endian.
//
// Files are written under a temporary name in the same folder and renamed, so a
// crash never leaves a half-written model. Loading checks the checksum before
// parsing anything; it is pure data, no code from the file ever runs (LibTorch's
// own archives carry TorchScript, whose parser a fuzzer crashed: they are not used);
// every record's declared size is checked against the bytes present before
// anything is allocated, and each weight against the shape the configuration implies.

#include <ATen/core/Tensor.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "patchwise/model/patch_classifier.h"

namespace patchwise {

constexpr char kModelMagic[] = "PATCHWSE";
constexpr char kChecksumTag[] = "PWCK";
constexpr int kModelFormatVersion = 2;

nlohmann::json model_config_to_json(const ModelConfig& config);
/// Throws InputError naming `source` when a field is missing or has the wrong type.
ModelConfig model_config_from_json(const nlohmann::json& json, const std::string& source);

/// Named tensors stored with the weights: a training checkpoint's optimizer and RNG state.
using TensorMap = std::map<std::string, at::Tensor>;

/// Writes `model` (moved to the CPU for writing) with `training` (any JSON: options,
/// per-epoch history) and `state` tensors atomically to `path`. Throws InputError
/// when it cannot be written.
void save_model(
    const std::string& path, PatchClassifier& model, const nlohmann::json& training,
    const TensorMap& state = {});

/// The state tensors of a model file (empty for a finished model); InputError on a
/// bad file.
TensorMap load_model_state(const std::string& path);

/// state[key], which a checkpoint read from `path` must hold; InputError naming the
/// file and the key otherwise.
const at::Tensor& state_tensor(
    const TensorMap& state, const std::string& key, const std::string& path);

/// Reads a model file; throws InputError on a missing, foreign, corrupt or
/// other-version file. The model is on the CPU, in evaluation mode.
PatchClassifier load_model(const std::string& path);
/// The "training" section of a model file (null JSON when absent).
nlohmann::json load_model_training(const std::string& path);

/// Starts `model` from the weights of the model file at `path` (a warm start): every
/// parameter and buffer by name, the input normalization included. InputError naming
/// the file and the weight when one is missing, unexpected, or of another shape or type.
void load_model_weights(PatchClassifier& model, const std::string& path);

/// All of a model file from one read: load_model, load_model_training and load_model_state.
struct ModelFile {
  PatchClassifier model{nullptr};
  nlohmann::json training;
  TensorMap state;
};
ModelFile load_model_file(const std::string& path);

}  // namespace patchwise
