#pragma once
// Models to PyTorch: the weights as a state dict in torch.save's format, which Python's
// torch.load reads as a dict of tensors under PyTorch's own names (the module paths of
// PatchClassifier: "backbone.layer1.0.conv1.weight", "attention.V", "mean", ...), and the
// configuration as JSON beside it. scripts/patchwise_torch.py rebuilds the same model in
// Python from the two.

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "patchwise/model/patch_classifier.h"

namespace patchwise {

/// Every parameter, then every buffer, by its module path (torch.nn.Module.state_dict's
/// keys); the tensors are the model's own, not copies.
std::vector<std::pair<std::string, at::Tensor>> named_state(PatchClassifier& model);

/// The model's parameters and buffers by name, as torch.save writes a state dict (a zip
/// archive holding a pickle and one record per tensor), from CPU copies.
std::vector<char> state_dict_bytes(PatchClassifier& model);

/// The model file's configuration (model_config_to_json), plus "format":
/// "patchwise-torch-export", the patch boxes in image pixels ("patches": y, x, h, w,
/// flip) for grid models, and the state dict's names and shapes ("state_dict").
nlohmann::json export_config(PatchClassifier& model);

/// Writes state_dict_bytes to `path` and export_config to `config_path`, each atomically,
/// and returns that configuration. InputError naming the path when one cannot be written.
nlohmann::json export_model(
    PatchClassifier& model, const std::string& path, const std::string& config_path);

}  // namespace patchwise
