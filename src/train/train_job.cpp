#include "patchwise/train/train_job.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <tuple>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/base/json_text.h"
#include "patchwise/fusion/fusion.h"
#include "patchwise/model/bag_options.h"
#include "patchwise/model/feature_cache.h"
#include "patchwise/model/torch_import.h"
#include "patchwise/train/loss.h"
#include "patchwise/train/optimizer.h"

namespace patchwise {
namespace {

/// Bytes of bags a tiled set keeps in memory.
int64_t bag_cache_bytes(double megabytes) { return static_cast<int64_t>(megabytes * 1048576.0); }

/// The first `limit` items of `data` (0: all).
Dataset first_items(const Dataset& data, int64_t limit) {
  if (limit <= 0 || limit >= data.size()) return data;
  std::vector<int64_t> index(static_cast<size_t>(limit));
  std::iota(index.begin(), index.end(), int64_t{0});
  return subset(data, index);
}

/// The rules between the source, the starting weights and the model's options.
void check_source_and_model(const TrainJobOptions& o) {
  check_input(
      o.data.empty() != o.features.empty(),
      "train: {}, expected one of --data DIR or --features FILE",
      o.data.empty() ? "neither --data nor --features" : "both --data and --features");
  check_option(
      o.init.empty() || o.features.empty(),
      "init",
      "{}: a head trained on a feature cache starts from the cache's model, expected no "
      "--init with --features",
      o.init);
  check_option(
      !o.init_new_head || !o.init.empty(),
      "init_new_head",
      "without --init, expected --init FILE whose weights start the run");
  check_option(
      !o.model.position_embedding || fusion_rule_has_attention(o.model.fusion),
      "position_embedding",
      "only used by --fusion attention or gated-attention, not {}",
      fusion_rule_name(o.model.fusion));
  check_fusion_fits(o.model.fusion, o.model.tiled);
  if (o.model.tiled) check_tile_options(o.model.tiles);
}

/// What the run was, in the model file's training record beside the flags and the history.
nlohmann::json run_summary(const TrainJobOptions& o) {
  const TrainerOptions& t = o.trainer;
  return {
      {"data", o.data},
      {"features", o.features},
      {"loss", loss_kind_name(t.loss)},
      {"epochs", t.epochs},
      {"batch", t.batch},
      {"lr", t.optimizer.lr},
      {"optimizer", optimizer_kind_name(t.optimizer.kind)},
      {"seed", t.seed},
      {"val_split", o.val_split},
      {"keep", t.keep_best ? "best" : "last"},
      {"augment",
       {{"shift", t.augment.shift}, {"flip", t.augment.flip}, {"erase", t.augment.erase}}}};
}

}  // namespace

const Dataset* TrainSets::eval_set() const {
  return validation.size() > 0 ? &validation : has_test() ? &test : nullptr;
}

std::vector<nlohmann::json> checkpoint_history(const nlohmann::json& training) {
  std::vector<nlohmann::json> out;
  if (!training.is_object()) return out;
  const nlohmann::json history = training.value("history", nlohmann::json());
  if (history.is_array()) out.assign(history.begin(), history.end());
  return out;
}

TrainJob::TrainJob(TrainJobOptions options) : options_(std::move(options)) {
  TrainerOptions& trainer = options_.trainer;
  if (trainer.checkpoint.empty()) trainer.checkpoint = options_.out + ".ckpt";
  check_source_and_model(options_);
  check_trainer_options(
      trainer, options_.model.fusion, options_.val_split > 0, options_.world_size);
}

void TrainJob::load_sets() {
  const TrainJobOptions& o = options_;
  if (!o.features.empty()) {
    sets_.cache = std::make_shared<FeatureCache>(load_feature_cache(o.features));
    sets_.train = first_items(sets_.cache->split("train", o.features + " (train)"), o.limit_train);
    sets_.test = first_items(sets_.cache->split("test", o.features + " (test)"), o.limit_test);
    check_input(sets_.train.size() > 0, "{}: no training images in the feature cache", o.features);
    return;
  }
  DataOptions train_options = o.data_options;
  DataOptions test_options = o.data_options;
  train_options.limit = o.limit_train;
  test_options.limit = o.limit_test;
  train_options.folder.list_only = test_options.folder.list_only = o.model.tiled;
  sets_.train = load_data(o.data, "train", train_options, &sets_.skipped);
  if (!has_test_split(o.data)) return;
  sets_.test = load_data(o.data, "test", test_options, &sets_.skipped);
  check_input(
      align_class_names(sets_.test, sets_.train.class_names) ||
          sets_.test.class_names == sets_.train.class_names,
      "{}: test classes differ from the training classes",
      o.data);
}

/// A tiled run: the model takes bags of tiles at its input size; its normalization comes
/// from the tiles of the first training images; the trainer reads bags, keeping them in
/// memory up to in_memory_limit_mb for each set.
void TrainJob::setup_tiled(ModelConfig& config) {
  const int64_t input = config.grid.input;
  config.grid = PatchGridOptions{};
  config.grid.rows = config.grid.cols = 1;
  config.grid.patch_h = config.grid.patch_w = config.grid.input = input;
  config.image_h = config.image_w = input;
  config.image_channels =
      open_region_reader(sets_.train.files.paths.front(), options_.reader)->channels();
  const BagOptions bags = model_bag_options(config, options_.reader);
  config.normalization = tile_normalization(sets_.train, bags, 64);
  const int64_t cache = bag_cache_bytes(options_.in_memory_limit_mb);
  TrainerOptions& trainer = options_.trainer;
  trainer.bags = bag_reader(sets_.train, bags, cache, sets_.tally);
  if (sets_.eval_set() != nullptr) trainer.eval_bags = bag_reader(*sets_.eval_set(), bags, cache);
}

/// The model to build: the cache's (with the head's options), or the options' on the data.
ModelConfig TrainJob::model_config() {
  const ModelConfig& wanted = options_.model;
  if (sets_.cache) {
    ModelConfig config = sets_.cache->model->config();
    options_.trainer.bags = sets_.cache->bags(sets_.train);
    if (sets_.eval_set() != nullptr)
      options_.trainer.eval_bags = sets_.cache->bags(*sets_.eval_set());
    config.backbone.dropout = wanted.backbone.dropout;
    config.fusion = wanted.fusion;
    config.attention_hidden = wanted.attention_hidden;
    config.position_embedding = wanted.position_embedding;
    return config;
  }
  ModelConfig config = wanted;
  config.image_channels = sets_.train.channels();
  config.image_h = sets_.train.height();
  config.image_w = sets_.train.width();
  config.class_names = sets_.train.class_names;
  config.class_names.resize(std::max<size_t>(config.class_names.size(), 2));
  if (config.tiled) {
    setup_tiled(config);
  } else {
    config.normalization = compute_normalization(sets_.train);
  }
  config.backbone.num_classes = static_cast<int64_t>(config.class_names.size());
  return config;
}

void TrainJob::prepare() {
  load_sets();
  const TrainJobOptions& o = options_;
  if (o.val_split > 0) {
    std::tie(sets_.train, sets_.validation) =
        stratified_split(sets_.train, o.val_split, o.trainer.seed);
    sets_.validation.source = (o.features.empty() ? o.data : o.features) + " (validation split)";
  }
  const ModelConfig config = model_config();
  torch::manual_seed(o.trainer.seed);
  model_ = sets_.cache ? head_model(*sets_.cache, config) : PatchClassifier(config);
  // A resumed run's weights come from its checkpoint, not from init again.
  if (!o.init.empty() && o.trainer.resume.empty()) {
    load_initial_weights(model_, o.init, o.init_new_head);
  }
  model_->to(o.device);
  model_->set_precision(o.precision);
}

/// The metrics file, written afresh, with the epochs of the checkpoint resumed from.
std::ofstream TrainJob::open_metrics() const {
  std::ofstream metrics;
  if (options_.metrics.empty()) return metrics;
  metrics.open(options_.metrics, std::ios::trunc);
  check_input(metrics.good(), "--metrics: cannot write {}", printable(options_.metrics));
  if (!options_.resume_file) return metrics;
  for (const nlohmann::json& m : checkpoint_history(options_.resume_file->training)) {
    metrics << m.dump() << '\n';
  }
  metrics.flush();
  return metrics;
}

TrainResult TrainJob::train(const TrainerCallbacks& callbacks, Distributed* group) {
  TrainerOptions trainer = options_.trainer;
  trainer.distributed = group;
  trainer.resume_file = options_.resume_file;
  trainer.checkpoint_note = json_text(options_.record);
  std::ofstream metrics = open_metrics();
  TrainerCallbacks with_metrics = callbacks;
  if (metrics.is_open()) {
    with_metrics.on_epoch = [&](const EpochMetrics& m) {
      if (callbacks.on_epoch) callbacks.on_epoch(m);
      metrics << epoch_metrics_to_json(m).dump() << std::endl;
    };
  }
  return train_model(model_, sets_.train, sets_.eval_set(), trainer, with_metrics);
}

std::optional<Evaluation> TrainJob::final_test() {
  if (!(options_.val_split > 0 && sets_.has_test())) return std::nullopt;
  const BagFn test_bags =
      sets_.cache ? sets_.cache->bags(sets_.test)
      : options_.model.tiled
          ? bag_reader(sets_.test, model_bag_options(model_->config(), options_.reader), 0)
          : BagFn{};
  return evaluate(model_, sets_.test, options_.trainer.eval_batch, false, test_bags);
}

nlohmann::json TrainJob::save(const TrainResult& result) {
  const TrainJobOptions& o = options_;
  nlohmann::json epochs = nlohmann::json::array();
  for (const EpochMetrics& m : result.history) epochs.push_back(epoch_metrics_to_json(m));
  nlohmann::json training = run_summary(o);
  training.update(o.record);
  training["train_images"] = sets_.train.size();
  training["validation_images"] = sets_.validation.size();
  training["kept_epoch"] = result.kept_epoch;
  training["history"] = epochs;
  save_model(o.out, model_, training);
  std::error_code ignored;
  std::filesystem::remove(o.trainer.checkpoint, ignored);  // the finished model supersedes it
  return epochs;
}

}  // namespace patchwise
