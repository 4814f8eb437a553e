#include "patchwise/model/torch_import.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/model/torch_export.h"
#include "patchwise/models/registry.h"

namespace patchwise {
namespace {

// ---------------------------------------------------------------------------------------
// Messages

/// Up to three names quoted, and how many more.
std::string listed(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 3; ++i) {
    out += (i > 0 ? ", '" : "'") + printable(names[i]) + "'";
  }
  return names.size() > 3 ? fmt::format("{} and {} more", out, names.size() - 3) : out;
}

/// How a file names its tensors (see import_torch_weights).
enum class Naming { kModel, kBackbone };

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

Naming naming_of(const TensorMap& state) {
  for (const auto& entry : state) {
    if (starts_with(entry.first, "backbone.")) return Naming::kModel;
  }
  return Naming::kBackbone;
}

/// A backbone-only file's layer prefixes onto the model's ("features.3." ->
/// "backbone.conv.2."), by the backbone's registry entry (foreign_layers).
std::map<std::string, std::string> foreign_layers(
    const PatchClassifier& model, const TensorMap& state, const TensorMap& ours) {
  const BackboneInfo& info = find_backbone(model->config().backbone.name);
  if (info.foreign_layers == nullptr) return {};
  TensorMap own;
  for (const auto& [name, tensor] : ours) {
    if (starts_with(name, "backbone.")) own.emplace(name.substr(9), tensor);
  }
  std::map<std::string, std::string> layers;
  for (const auto& [from, to] : info.foreign_layers(state, own)) layers[from] = "backbone." + to;
  return layers;
}

/// One tensor of the file and the model's it goes to.
struct Match {
  std::string file_name;
  std::string model_name;
};

/// The file's names mapped to the model's: matches, and the names nothing matched.
struct Mapping {
  std::vector<Match> matches;
  std::vector<std::string> unexpected;
};

/// `name` as the model names it: a model file's as it is, a backbone-only file's under
/// "backbone.", through the longest of `layers`' prefixes that starts it.
std::string model_name(
    const std::string& name, Naming naming, const std::map<std::string, std::string>& layers) {
  if (naming == Naming::kModel) return name;
  const std::pair<const std::string, std::string>* longest = nullptr;
  for (const auto& layer : layers) {
    if (starts_with(name, layer.first) && (!longest || layer.first.size() > longest->first.size()))
      longest = &layer;
  }
  return longest ? longest->second + name.substr(longest->first.size()) : "backbone." + name;
}

/// "fc.*" or "classifier.*" (after "backbone."): a classifier keep_head leaves out.
bool names_classifier(const std::string& name) {
  const std::string own = starts_with(name, "backbone.") ? name.substr(9) : name;
  return starts_with(own, "fc.") || starts_with(own, "classifier.");
}

bool is_step_count(const std::string& name) {
  const std::string suffix = "num_batches_tracked";
  return name.size() >= suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Mapping map_names(
    const PatchClassifier& model, const TensorMap& state, const TensorMap& ours,
    const std::set<std::string>& head, bool keep_head) {
  const Naming naming = naming_of(state);
  const std::map<std::string, std::string> layers = naming == Naming::kModel
                                                        ? std::map<std::string, std::string>{}
                                                        : foreign_layers(model, state, ours);
  Mapping mapping;
  for (const auto& entry : state) {
    const std::string& name = entry.first;
    const std::string target = model_name(name, naming, layers);
    if (keep_head && (head.count(target) > 0 || names_classifier(name))) continue;
    if (ours.count(target) > 0) {
      mapping.matches.push_back({name, target});
    } else if (!is_step_count(name)) {
      mapping.unexpected.push_back(name);
    }
  }
  return mapping;
}

/// The model's tensors a file must hold: all (the model's names), or the backbone's;
/// without the classifier's for keep_head; num_batches_tracked never.
std::vector<std::string> missing_names(
    const Mapping& mapping, const TensorMap& ours, const std::set<std::string>& head,
    bool keep_head, bool whole_model) {
  std::set<std::string> found;
  for (const Match& m : mapping.matches) found.insert(m.model_name);
  std::vector<std::string> missing;
  for (const auto& entry : ours) {
    const std::string& name = entry.first;
    const bool wanted = (whole_model || starts_with(name, "backbone.")) &&
                        !(keep_head && head.count(name) > 0) && !is_step_count(name);
    if (wanted && found.count(name) == 0) missing.push_back(name);
  }
  return missing;
}

std::string shape(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

/// `from` fits `to`: the same shape, and floating point for floating point (any width),
/// integers for integers.
void check_fits(
    const Match& m, const at::Tensor& from, const at::Tensor& to, const std::string& path) {
  const std::string name =
      m.file_name == m.model_name
          ? fmt::format("'{}'", printable(m.file_name))
          : fmt::format("'{}' (the model's '{}')", printable(m.file_name), m.model_name);
  check_input(
      from.sizes() == to.sizes(),
      "{}: {} has shape {}, expected {}",
      path,
      name,
      shape(from),
      shape(to));
  check_input(
      from.is_floating_point() == to.is_floating_point() && from.scalar_type() != at::kBool,
      "{}: {} holds {} values, expected {}",
      path,
      name,
      c10::toString(from.scalar_type()),
      c10::toString(to.scalar_type()));
}

/// The names of the parameters that depend on the classes
/// (PatchClassifierImpl::class_head_parameters).
std::set<std::string> head_names(PatchClassifier& model, const TensorMap& ours) {
  std::set<std::string> head;
  for (const at::Tensor& p : model->class_head_parameters()) {
    for (const auto& [name, tensor] : ours) {
      if (tensor.unsafeGetTensorImpl() == p.unsafeGetTensorImpl()) head.insert(name);
    }
  }
  return head;
}

bool starts_like_zip(const std::string& path) {
  char magic[4] = {};
  std::ifstream in(path, std::ios::binary);
  in.read(magic, sizeof magic);
  return in.gcount() == 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0;
}

}  // namespace

void import_torch_weights(
    PatchClassifier& model, const TensorMap& state, const std::string& path, bool keep_head) {
  const auto named = named_state(model);
  const TensorMap ours(named.begin(), named.end());
  const std::set<std::string> head = head_names(model, ours);
  const Mapping mapping = map_names(model, state, ours, head, keep_head);
  check_input(
      mapping.unexpected.empty(),
      "{}: {} tensors unknown to this model: {}; expected the model's names, the backbone's "
      "or torchvision VGG's{}",
      path,
      mapping.unexpected.size(),
      listed(mapping.unexpected),
      keep_head ? "" : " (a classifier of another size: train --init-new-head)");
  const bool whole_model = naming_of(state) == Naming::kModel;
  const std::vector<std::string> missing =
      missing_names(mapping, ours, head, keep_head, whole_model);
  check_input(
      missing.empty(),
      "{}: {} of the model's tensors missing: {}; expected every {}{}",
      path,
      missing.size(),
      listed(missing),
      whole_model ? "parameter and buffer of the model" : "parameter and buffer of the backbone",
      keep_head ? " but the classifier's" : "");
  for (const Match& m : mapping.matches) {
    const at::Tensor& source = state.at(m.file_name);
    check_fits(m, source, ours.at(m.model_name), path);
    check_input(
        !source.is_floating_point() || torch::isfinite(source).all().item<bool>(),
        "{}: tensor '{}' holds values that are not finite (NaN or infinite), expected numbers",
        path,
        printable(m.file_name));
  }
  torch::NoGradGuard no_grad;
  for (const Match& m : mapping.matches) {
    at::Tensor target = ours.at(m.model_name);
    target.copy_(state.at(m.file_name));
  }
}

void load_initial_weights(PatchClassifier& model, const std::string& path, bool keep_head) {
  check_readable_file(path, "weights file (a patchwise model or torch.save's zip)");
  if (starts_like_zip(path)) {
    import_torch_weights(model, read_torch_state_dict(path), path, keep_head);
  } else if (!keep_head) {
    load_model_weights(model, path);
  } else {
    ModelFile file = load_model_file(path);
    const auto named = named_state(file.model);
    import_torch_weights(model, TensorMap(named.begin(), named.end()), path, keep_head);
  }
}

}  // namespace patchwise
