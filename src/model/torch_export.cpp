#include "patchwise/model/torch_export.h"

#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/torch.h>

#include <ostream>

#include "patchwise/base/files.h"
#include "patchwise/base/json_text.h"
#include "patchwise/model/model_file.h"

namespace patchwise {

std::vector<std::pair<std::string, at::Tensor>> named_state(PatchClassifier& model) {
  std::vector<std::pair<std::string, at::Tensor>> state;
  for (const auto& p : model->named_parameters()) state.emplace_back(p.key(), p.value());
  for (const auto& b : model->named_buffers()) state.emplace_back(b.key(), b.value());
  return state;
}

std::vector<char> state_dict_bytes(PatchClassifier& model) {
  torch::NoGradGuard no_grad;
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, tensor] : named_state(model)) {
    dict.insert(name, tensor.detach().to(torch::kCPU).contiguous().clone());
  }
  return torch::jit::pickle_save(dict);
}

nlohmann::json export_config(PatchClassifier& model) {
  nlohmann::json j = model_config_to_json(model->config());
  j["format"] = "patchwise-torch-export";
  if (!model->config().tiled) {
    nlohmann::json patches = nlohmann::json::array();
    for (const PatchBox& b : model->grid().boxes()) {
      patches.push_back({{"y", b.y}, {"x", b.x}, {"h", b.h}, {"w", b.w}, {"flip", b.flip}});
    }
    j["patches"] = patches;
  }
  nlohmann::json names = nlohmann::json::object();
  for (const auto& [name, tensor] : named_state(model)) names[name] = tensor.sizes().vec();
  j["state_dict"] = names;
  return j;
}

nlohmann::json export_model(
    PatchClassifier& model, const std::string& path, const std::string& config_path) {
  const std::vector<char> bytes = state_dict_bytes(model);
  const nlohmann::json config = export_config(model);
  write_file_atomically(path, "--out", [&](std::ostream& out) {
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  });
  write_file_atomically(
      config_path, "--config", [&](std::ostream& out) { out << json_text(config, 2) << "\n"; });
  return config;
}

}  // namespace patchwise
