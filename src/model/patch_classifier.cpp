#include "patchwise/model/patch_classifier.h"

#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "patchwise/base/error.h"
#include "patchwise/fusion/registry.h"
#include "patchwise/models/kernels.h"
#include "patchwise/models/registry.h"
#include "patchwise/patch/bags.h"

namespace patchwise {
namespace {

/// Patches per backbone pass on the CPU (PatchClassifierImpl::forward).
constexpr int64_t kChunkPatches = 128;

/// f over rows [start, start + chunk) of 0..rows, concatenated (one call when they fit,
/// an empty batch included).
template <typename F>
at::Tensor chunked(int64_t rows, int64_t chunk, F&& f) {
  if (rows <= chunk) return f(0, rows);
  const SteadyWeights steady;  // one pass: the weights hold still from chunk to chunk
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < rows; start += chunk) {
    parts.push_back(f(start, std::min(chunk, rows - start)));
  }
  return torch::cat(parts);
}

}  // namespace

PatchClassifierImpl::PatchClassifierImpl(const ModelConfig& config)
    : config_(config),
      grid_(config.grid, config.image_h, config.image_w),
      trained_fusion_(config.fusion) {
  const int64_t channels = config.image_channels;
  check_input(
      static_cast<int64_t>(config.normalization.mean.size()) == channels &&
          static_cast<int64_t>(config.normalization.std.size()) == channels,
      "normalization has {} means and {} deviations for {} image channels",
      config.normalization.mean.size(),
      config.normalization.std.size(),
      channels);
  check_input(
      static_cast<int64_t>(config.class_names.size()) == config.backbone.num_classes,
      "{} class names for {} classes",
      config.class_names.size(),
      config.backbone.num_classes);
  config_.backbone.in_channels = channels;
  config_.backbone.input = config.grid.input;
  backbone_ = register_module("backbone", make_backbone(config_.backbone));
  add_fusion_head();
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  mean_ = register_buffer(
      "mean",
      torch::tensor(config.normalization.mean, f64).to(torch::kFloat32).view({1, channels, 1, 1}));
  std_ = register_buffer(
      "std",
      torch::tensor(config.normalization.std, f64).to(torch::kFloat32).view({1, channels, 1, 1}));
}

void PatchClassifierImpl::add_fusion_head() {
  const FusionRuleInfo& rule = fusion_rule_info(config_.fusion);
  if (!rule.learned()) return;
  FusionHeadOptions options;
  options.features = backbone_->feature_dim();
  options.classes = config_.backbone.num_classes;
  options.positions = config_.tiled ? 0 : grid_.count();
  options.hidden = config_.attention_hidden;
  options.position_embedding = config_.position_embedding;
  fusion_head_ = register_module(rule.module, rule.make_head(options));
}

at::Tensor PatchClassifierImpl::normalize(const at::Tensor& images) const {
  at::Tensor x = images.to(mean_.device(), torch::kFloat32, /*non_blocking=*/true);
  return x.div_(255.0f).sub_(mean_).div_(std_);
}

at::Tensor PatchClassifierImpl::backbone_features(const at::Tensor& x) {
  if (precision_ == Precision::kFloat32) return backbone_->features(x);
  AutocastScope autocast(precision_);
  return backbone_->features(x).to(torch::kFloat32);
}

PatchOutput PatchClassifierImpl::forward(const at::Tensor& images) {
  TORCH_CHECK(
      images.dim() == 4 && images.size(1) == config_.image_channels,
      "PatchClassifier expects [B,",
      config_.image_channels,
      ",H,W], got ",
      images.sizes());
  const int64_t batch = images.size(0);
  const int64_t count = grid_.count();
  // On the CPU, a few dozen patches at a time keep every layer's activations in
  // the cache: measured 2-3x faster than one pass over 1,024 patches. Batch
  // normalization in training needs the whole batch's statistics, so it gets one pass.
  const int64_t per_chunk = std::max<int64_t>(1, kChunkPatches / count);
  const bool whole_batch = is_training() && backbone_has_batch_norm(config_.backbone);
  const bool chunk = images.device().is_cpu() && !whole_batch;
  at::Tensor features = chunked(batch, chunk ? per_chunk : batch, [&](int64_t start, int64_t n) {
    at::Tensor part = images.narrow(0, start, n);
    at::Tensor x = part.scalar_type() == torch::kUInt8 ? normalize(part) : part;
    return backbone_features(grid_.cut(x).flatten(0, 1));  // [n*P,F]: shared weights
  });
  return head(features.view({batch, count, features.size(1)}));
}

at::Tensor PatchClassifierImpl::tile_features(const at::Tensor& tiles) {
  const int64_t input = config_.grid.input;
  TORCH_CHECK(
      tiles.dim() == 4 && tiles.size(1) == config_.image_channels && tiles.size(2) == input &&
          tiles.size(3) == input,
      "PatchClassifier expects tiles [N,",
      config_.image_channels,
      ",",
      input,
      ",",
      input,
      "], got ",
      tiles.sizes());
  const int64_t rows = tiles.size(0);
  const bool whole_batch = is_training() && backbone_has_batch_norm(config_.backbone);
  const bool chunk = tiles.device().is_cpu() && !whole_batch;
  return chunked(rows, chunk ? kChunkPatches : rows, [&](int64_t start, int64_t n) {
    at::Tensor part = tiles.narrow(0, start, n);
    return backbone_features(part.scalar_type() == torch::kUInt8 ? normalize(part) : part);
  });
}

PatchOutput PatchClassifierImpl::forward_bags(
    const at::Tensor& tiles, const std::vector<int64_t>& counts) {
  const bool features = tiles.dim() == 2;
  TORCH_CHECK(
      !features || (tiles.size(1) == backbone_->feature_dim() && tiles.is_floating_point()),
      "PatchClassifier expects features [N,",
      backbone_->feature_dim(),
      "] of float, got ",
      tiles.sizes(),
      " of ",
      tiles.scalar_type());
  PaddedBags bags = pad_bags(features ? tiles : tile_features(tiles), counts);
  return head(bags.values, bags.mask);
}

PatchOutput PatchClassifierImpl::head(const at::Tensor& features, const at::Tensor& mask) {
  const int64_t batch = features.size(0);
  const int64_t count = features.size(1);
  at::Tensor logits = backbone_->classify(features.flatten(0, 1));
  PatchOutput out;
  out.patch_logits = logits.view({batch, count, logits.size(1)});
  out.features = features;
  out.mask = mask;
  if (fusion_rule_is_learned(config_.fusion)) {
    Fused fused = fusion_head_->fuse(features, mask, *backbone_);
    out.log_probs = fused.log_probs;
    out.attention = fused.attention;
  } else {
    out.log_probs = fuse(config_.fusion, out.patch_logits, mask);
  }
  return out;
}

void PatchClassifierImpl::freeze_features() {
  std::vector<at::Tensor> head = backbone_->classifier_parameters();
  for (at::Tensor& p : backbone_->parameters()) {
    const bool in_head =
        std::any_of(head.begin(), head.end(), [&](const at::Tensor& h) { return h.is_same(p); });
    if (!in_head) p.requires_grad_(false);
  }
}

std::vector<at::Tensor> PatchClassifierImpl::class_head_parameters() const {
  std::vector<at::Tensor> head = backbone_->classifier_parameters();
  if (fusion_head_) {
    for (const at::Tensor& p : fusion_head_->class_parameters()) head.push_back(p);
  }
  return head;
}

std::vector<at::Tensor> PatchClassifierImpl::trainable_parameters() const {
  std::vector<at::Tensor> trainable;
  for (const at::Tensor& p : parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  return trainable;
}

void PatchClassifierImpl::set_fusion(FusionRule rule) {
  check_option(
      !fusion_rule_is_learned(rule) || rule == trained_fusion_,
      "fusion",
      "{}: a learned rule needs a model trained with it (this one uses {})",
      fusion_rule_name(rule),
      fusion_rule_name(trained_fusion_));
  config_.fusion = rule;
}

void check_dataset_fits(const ModelConfig& config, const Dataset& data) {
  check_input(data.size() > 0, "{}: no images", data.source);
  check_input(
      config.tiled || (data.channels() == config.image_channels &&
                       data.height() == config.image_h && data.width() == config.image_w),
      "{}: images are {}x{} with {} channel(s), the model expects {}x{} with {}",
      data.source,
      data.height(),
      data.width(),
      data.channels(),
      config.image_h,
      config.image_w,
      config.image_channels);
  const int64_t low = data.labels.min().item<int64_t>();
  const int64_t high = data.labels.max().item<int64_t>();
  check_input(
      low >= 0 && high < config.backbone.num_classes,
      "{}: label {} out of range, the model has classes 0..{}",
      data.source,
      low < 0 ? low : high,
      config.backbone.num_classes - 1);
}

}  // namespace patchwise
