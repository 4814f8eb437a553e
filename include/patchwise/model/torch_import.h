#pragma once
// Models from PyTorch: weights saved by Python's torch.save(model.state_dict(), path), the
// reverse of torch_export.h, to start training from (`patchwise train --init FILE`).
//
// torch.save writes a zip archive (stored, not compressed) of "<prefix>/data.pkl", a
// pickle of the state dict, and one record "<prefix>/data/<key>" per tensor storage. A
// pickle is a program: Python's unpickler calls whatever the file names. This reader runs
// none of it. It interprets the opcodes a state dict needs (protocols 2 to 4) and only
// these globals: collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter(_with_state), the typed storages torch.*Storage, and
// torch.jit._pickle.restore_type_tag (an identity LibTorch's own pickler writes, so that
// export's files read back); anything else is refused before it could be called. Every
// size, offset, count and stride is checked against the bytes present before anything is
// allocated, and the tensors are copied out of the file into memory of their own.
//
// LibTorch's own torch::pickle_load (1.13) was not enough: it fails on every plain
// state_dict() (it reads collections.OrderedDict as None, then asserts), and it takes a
// storage's size, a tensor's sizes, strides and offset from the pickle unchecked, so a
// crafted file loads tensors that read past their record or crash on first use.
//
// In layers: src/model/torch_zip.cpp (the archive), torch_pickle.cpp (the unpickler),
// torch_state_dict.cpp (the value as named tensors), torch_import.cpp (the file's names
// onto the model's; another library's layer names come from the backbone's registry
// entry, models/registry.h's foreign_layers).

#include <string>
#include <utility>
#include <vector>

#include "patchwise/model/model_file.h"
#include "patchwise/model/patch_classifier.h"

namespace patchwise {

/// The tensors of a state dict saved by torch.save (or by torch_export.h), by name. A
/// checkpoint dict holding the state dict under "state_dict" or "model" is unwrapped.
/// InputError with one line naming the file, the value and what was expected when the
/// file is not such an archive, is compressed, truncated or corrupt, or its pickle holds
/// anything else.
TensorMap read_torch_state_dict(const std::string& path);

/// Copies `state` (read from `path`, named in messages) into `model` by name. The names
/// may be the model's own ("backbone.layer1.0.conv1.weight", "mean": what export writes),
/// the backbone's alone ("layer1.0.conv1.weight", "fc.weight": torchvision's ResNet), or
/// torchvision's VGG ("features.<i>.*": the k-th convolution and batch norm there onto
/// vgg16's k-th). Backbone-only files leave the input normalization and the attention as
/// they are. With `keep_head` the parameters that follow the classes (class_head_parameters:
/// the backbone's classifier, concat's head) keep their weights and the file's ("fc.*",
/// "classifier.*", "concat.*") are skipped: an ImageNet model with a new head. Otherwise
/// every tensor must be present, and every name known; floating-point tensors are converted
/// to the model's type; num_batches_tracked may be absent. Nothing is copied unless
/// everything fits: InputError naming the file and the tensor otherwise.
void import_torch_weights(
    PatchClassifier& model, const TensorMap& state, const std::string& path, bool keep_head);

/// The weights `patchwise train --init FILE` starts from: a PyTorch archive (a zip file)
/// through read_torch_state_dict and import_torch_weights, anything else as a patchwise
/// model file (load_model_weights; with `keep_head`, all but the classifier).
void load_initial_weights(PatchClassifier& model, const std::string& path, bool keep_head);

/// A zip archive of `entries` (name, bytes) in torch.save's layout: every entry stored,
/// no compression. For hand-made archives in tests and fuzzing.
std::string stored_zip(const std::vector<std::pair<std::string, std::string>>& entries);

}  // namespace patchwise
