// The lines a training run prints: those that open it (TrainJob::plan: what the job will
// train, on what, and how), one per epoch, and the data-parallel summary.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "patchwise/base/precision.h"
#include "patchwise/fusion/fusion.h"
#include "patchwise/model/feature_cache.h"
#include "patchwise/train/loss.h"
#include "patchwise/train/optimizer.h"
#include "patchwise/train/schedule.h"
#include "patchwise/train/train_job.h"

namespace patchwise {
namespace {

/// "a, b and c" of the parts.
std::string joined(const std::vector<std::string>& parts) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    out += (i == 0 ? "" : i + 1 == parts.size() ? " and " : ", ") + parts[i];
  }
  return out;
}

/// What the recipe adds to plain training at a constant rate; "" when nothing.
std::string recipe_line(const TrainerOptions& t) {
  std::vector<std::string> recipe;
  const OptimizerOptions& o = t.optimizer;
  if (o.momentum > 0) {
    recipe.push_back(fmt::format("momentum {}{}", o.momentum, o.nesterov ? " (Nesterov)" : ""));
  }
  if (o.weight_decay > 0) recipe.push_back(fmt::format("weight decay {}", o.weight_decay));
  const ScheduleOptions& s = t.schedule;
  if (s.kind == ScheduleKind::kStep) {
    recipe.push_back(fmt::format("rate x{} every {} epochs", s.gamma, s.step_epochs));
  } else if (s.kind != ScheduleKind::kConstant) {
    recipe.push_back(schedule_kind_name(s.kind) + " schedule");
  }
  if (s.warmup_epochs > 0) recipe.push_back(fmt::format("{} epochs of warmup", s.warmup_epochs));
  if (t.label_smoothing > 0) recipe.push_back(fmt::format("label smoothing {}", t.label_smoothing));
  if (t.clip_grad_norm > 0) {
    recipe.push_back(fmt::format("gradient norm clipped to {}", t.clip_grad_norm));
  }
  if (t.ema > 0) recipe.push_back(fmt::format("weights averaged with decay {}", t.ema));
  return recipe.empty() ? "" : "train: recipe: " + joined(recipe);
}

/// The augmentation; "" when none.
std::string augment_line(const AugmentOptions& a) {
  std::vector<std::string> augment;
  if (a.shift > 0) augment.push_back(fmt::format("shifts up to {} pixels", a.shift));
  if (a.flip) augment.push_back("flips");
  if (a.erase > 0) augment.push_back(fmt::format("random erasing p {}", a.erase));
  return augment.empty() ? "" : "train: augmentation: " + joined(augment);
}

/// The images: their number in each set, their size, their source.
std::string data_line(const TrainJobOptions& o, const TrainSets& d, const ModelConfig& config) {
  const std::string sizes =
      d.cache ? fmt::format("large images as their tiles' cached {} features", config.backbone.name)
      : config.tiled
          ? fmt::format(
                "large images with {} channel(s), each read as its bag of tiles",
                config.image_channels)
          : fmt::format(
                "images of {}x{}x{}{}",
                d.train.height(),
                d.train.width(),
                d.train.channels(),
                d.train.in_memory()
                    ? ""
                    : " (over --in-memory-limit: decoded from the files batch by batch)");
  return fmt::format(
      "train: {} training, {} validation and {} test {}, {} classes, from {}",
      d.train.size(),
      d.validation.size(),
      d.test.size(),
      sizes,
      config.class_names.size(),
      d.cache ? o.features : o.data);
}

/// The model: its backbone, its patches or tiles, its fusion and loss.
std::string model_line(const TrainJobOptions& o, const TrainSets& d, const PatchClassifier& m) {
  const ModelConfig& config = m->config();
  const std::string fusion = fusion_rule_name(o.model.fusion);
  const std::string loss = loss_kind_name(o.trainer.loss);
  if (!config.tiled) {
    return fmt::format(
        "train: {} on a {} ({} patch{} per image); fusion {}, loss {}",
        o.model.backbone.name,
        m->grid().describe(),
        m->num_patches(),
        m->num_patches() == 1 ? "" : "es",
        fusion,
        loss);
  }
  const int64_t select = o.trainer.select;
  return fmt::format(
      "train: {} on bags of tiles of {} (stride {}, level {}, foreground >= {}) "
      "resized to {}x{}{}; fusion {}, loss {}",
      config.backbone.name,
      config.tiles.tile,
      config.tiles.stride > 0 ? config.tiles.stride : config.tiles.tile,
      config.tiles.level < 0 ? std::string("auto") : std::to_string(config.tiles.level),
      config.tiles.min_foreground,
      config.grid.input,
      config.grid.input,
      d.cache      ? ", frozen: only the head learns"
      : select > 0 ? fmt::format(", training on the {} best of each bag", select)
                   : "",
      fusion,
      loss);
}

}  // namespace

std::vector<std::string> TrainJob::plan(int64_t threads) const {
  const TrainJobOptions& o = options_;
  const TrainerOptions& t = o.trainer;
  std::vector<std::string> lines = {
      data_line(o, sets_, model_->config()),
      model_line(o, sets_, model_),
      fmt::format(
          "train: device {}, {} threads, {}, batch {}, {} lr {}, {} epochs, seed {}",
          o.device.str(),
          threads,
          precision_name(o.precision),
          t.batch,
          optimizer_kind_name(t.optimizer.kind),
          t.optimizer.lr,
          t.epochs,
          t.seed),
      recipe_line(t),
      augment_line(t.augment)};
  if (!o.init.empty()) {
    lines.push_back(fmt::format(
        "train: starting from the weights of {}{}",
        o.init,
        o.init_new_head ? ", with a new classifier" : ""));
  }
  lines.erase(std::remove(lines.begin(), lines.end(), std::string()), lines.end());
  return lines;
}

std::string epoch_line(const EpochMetrics& m, bool validation) {
  std::string line =
      fmt::format("Epoch {:>2} Loss: {:.3f} Acc: {:.3f}%", m.epoch, m.loss, 100.0 * m.accuracy);
  if (!std::isnan(m.test_accuracy)) {
    line += fmt::format(
        validation ? " VLoss: {:.3f} VAcc: {:.3f}%" : " TLoss: {:.3f} TAcc: {:.3f}%",
        m.test_loss,
        100.0 * m.test_accuracy);
  }
  return line + fmt::format("  ({:.1f} s, {:.0f} images/s)", m.seconds, m.images_per_second);
}

std::string data_parallel_line(const TrainResult& result) {
  return fmt::format(
      "train: data-parallel: {} gradient values in {} bucket{}; one allreduce of "
      "all of them {:.2f} ms (median); backward pass with its allreduces {:.2f} ms per step",
      result.gradient_floats,
      result.gradient_buckets,
      result.gradient_buckets == 1 ? "" : "s",
      result.allreduce_ms,
      result.backward_ms);
}

}  // namespace patchwise
