// The backbone registry: one line per network below; each lives in its own file.
#include "patchwise/models/backbone.h"

#include <fmt/format.h>

#include "layers.h"
#include "patchwise/base/error.h"
#include "patchwise/models/registry.h"

namespace patchwise {

const std::vector<BackboneInfo>& backbones() {
  static const std::vector<BackboneInfo> all = {
      detail::small_cnn_backbone(),
      detail::vgg16_backbone(),
      detail::resnet20_backbone(),
      detail::resnet56_backbone(),
      detail::resnet18_backbone(),
      detail::bagnet11_backbone(),
  };
  return all;
}

std::string backbone_names() {
  std::vector<std::string> names;
  for (const BackboneInfo& b : backbones()) names.push_back(b.name);
  return fmt::format("{}", fmt::join(names, ", "));
}

const BackboneInfo& find_backbone(const std::string& name) {
  for (const BackboneInfo& b : backbones()) {
    if (b.name == name) return b;
  }
  throw OptionError(
      "backbone",
      fmt::format("unknown backbone '{}', expected one of: {}", name, backbone_names()));
}

namespace {

void check_options(const BackboneInfo& info, const BackboneOptions& o) {
  check_input(
      o.in_channels == 1 || o.in_channels == 3,
      "{}: {} input channels, expected 1 or 3",
      o.name,
      o.in_channels);
  check_input(o.num_classes >= 2, "{}: {} classes, expected at least 2", o.name, o.num_classes);
  check_option(
      o.input >= info.min_input,
      "input",
      "{} is too small for {}, expected at least {}",
      o.input,
      o.name,
      info.min_input);
  // Above this one tile's activations alone outgrow any machine's memory (VGG16's first
  // layer at 1024^2 is 256 MiB a tile): refused before anything is allocated.
  constexpr int64_t kMaxInput = 1024;
  check_option(o.input <= kMaxInput, "input", "{}, expected at most {}", o.input, kMaxInput);
  check_option(
      o.dropout >= 0.0 && o.dropout < 1.0, "dropout", "{}, expected a value in [0, 1)", o.dropout);
}

}  // namespace

std::shared_ptr<BackboneImpl> make_backbone(const BackboneOptions& options) {
  const BackboneInfo& info = find_backbone(options.name);
  check_options(info, options);
  return info.make(options);
}

int64_t backbone_forward_macs(const BackboneOptions& options) {
  return find_backbone(options.name).macs(options);
}

bool backbone_has_batch_norm(const BackboneOptions& options) {
  return find_backbone(options.name).batch_norm == BatchNormUse::kAlways || options.batch_norm;
}

int64_t backbone_parameters(const BackboneOptions& options) {
  int64_t count = 0;
  for (const at::Tensor& p : make_backbone(options)->parameters()) count += p.numel();
  return count;
}

}  // namespace patchwise
