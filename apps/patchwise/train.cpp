// patchwise train: fits a PatchClassifier on a data set (or its head on a feature cache)
// and saves it.

#include <fmt/format.h>
#include <fmt/ostream.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/model/evaluation.h"
#include "patchwise/model/feature_cache.h"
#include "patchwise/base/files.h"
#include "patchwise/base/json_text.h"
#include "patchwise/model/model_file.h"
#include "patchwise/base/runtime.h"
#include "patchwise/model/torch_import.h"
#include "patchwise/data/source.h"
#include "patchwise/dist/distributed.h"
#include "patchwise/fusion/fusion.h"
#include "patchwise/models/registry.h"
#include "patchwise/patch/bags.h"
#include "patchwise/train/ema.h"
#include "patchwise/train/trainer.h"
#include "patchwise/model/bag_options.h"
#include "train_flags.h"

namespace patchwise::cli {
namespace {

/// Swallows what ranks other than 0 would log.
class NullBuffer : public std::streambuf {
 protected:
  int overflow(int c) override { return c == EOF ? 0 : c; }
};

/// The signal that asked training to stop (0: none).
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int signal) { g_stop_signal.store(signal); }

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

/// The sets a run trains and scores on: read from --data, or taken from a --features cache.
struct TrainData {
  Dataset train;
  Dataset validation;  ///< --val-split's share of the training set; empty without it
  Dataset test;        ///< empty when the data has no test split
  std::shared_ptr<FeatureCache> cache;  ///< --features: the cache the sets come from
  /// --tile: how the background filter fared on the training images, said after epoch 1
  std::shared_ptr<FilterTally> tally = std::make_shared<FilterTally>();

  bool has_test() const { return test.size() > 0; }
  /// What each epoch is scored on: the validation split, else the test split, else none.
  const Dataset* eval_set() const {
    return validation.size() > 0 ? &validation : has_test() ? &test : nullptr;
  }
};

/// "--data DIR" or "--features FILE": where the run's images come from, for messages.
std::string source_flags(const TrainFlags& f) {
  return f.features.empty() ? "--data " + f.data : "--features " + f.features;
}

/// A tiled run: the model takes bags of tiles at its input size; its normalization comes
/// from the tiles of the first training images; the trainer reads bags, keeping them in
/// memory up to --in-memory-limit for each set.
void setup_tiled(
    const TrainFlags& f, const TrainData& d, ModelConfig& config, TrainerOptions& options) {
  check_tile_options(f.tiles.tiles);
  config.tiled = true;
  config.tiles = f.tiles.tiles;
  config.grid = PatchGridOptions{};
  config.grid.rows = config.grid.cols = 1;
  config.grid.patch_h = config.grid.patch_w = config.grid.input = f.grid.input;
  config.image_h = config.image_w = f.grid.input;
  config.image_channels =
      open_region_reader(d.train.files.paths.front(), f.tiles.reader)->channels();
  const BagOptions bags = model_bag_options(config, f.tiles.reader);
  config.normalization = tile_normalization(d.train, bags, 64);
  const auto cache = static_cast<int64_t>(f.data_flags.in_memory_limit * 1048576.0);
  options.bags = bag_reader(d.train, bags, cache, d.tally);
  if (d.eval_set() != nullptr) options.eval_bags = bag_reader(*d.eval_set(), bags, cache);
  options.select = f.select;
}

/// --resume: the checkpoint's flags replace this command line's, except the output,
/// --epochs, --threads, and --data or --features when given.
void resume_flags(TrainFlags& f, const CLI::App* app) {
  if (f.resume.empty()) return;
  nlohmann::json training = load_model_training(f.resume);
  check_input(
      training.is_object() && training.contains("flags"),
      "--resume: {} is not a training checkpoint",
      f.resume);
  check_input(
      f.recipe.empty(),
      "--recipe: {} with --resume {}, expected one of them (a resumed run repeats its "
      "checkpoint's flags)",
      f.recipe,
      f.resume);
  const bool source_given = !f.data.empty() || !f.features.empty();
  const nlohmann::json& saved = training["flags"];
  flags_from_checkpoint(saved, f, app, f.resume);
  if (!source_given && saved.is_object()) {
    f.data = saved.value("data", "");
    f.features = saved.value("features", "");
  }
}

/// With --features the backbone, its input and its tiles come from the cache.
void check_feature_flags(const TrainFlags& f, const CLI::App* app) {
  if (f.features.empty()) return;
  for (const char* flag :
       {"--tile",
        "--select",
        "--shift",
        "--flip",
        "--model",
        "--batch-norm",
        "--grid",
        "--patch",
        "--stride",
        "--layout",
        "--input",
        "--position-embedding"}) {
    check_input(
        app->count(flag) == 0,
        "{}: the backbone and its tiles come from the feature cache {}, expected no {} "
        "with --features",
        flag,
        f.features,
        flag);
  }
}

/// Everything the flags alone decide, checked before any data is read.
void check_flags(
    const TrainFlags& f, const CLI::App* app, const DistributedConfig& dist, bool writer) {
  check_input(
      f.dist_timeout > 0 && std::isfinite(f.dist_timeout),
      "--dist-timeout: {}, expected a positive number of seconds",
      f.dist_timeout);
  check_input(
      f.data.empty() != f.features.empty(),
      "train: {}, expected one of --data DIR or --features FILE",
      f.data.empty() ? "neither --data nor --features" : "both --data and --features");
  check_feature_flags(f, app);
  check_input(
      f.init.empty() || f.features.empty(),
      "--init: {}: a head trained on a feature cache starts from the cache's model, expected "
      "no --init with --features",
      f.init);
  check_input(
      !f.init_new_head || !f.init.empty(),
      "--init-new-head: without --init, expected --init FILE whose weights start the run");
  if (writer) {
    check_output_writable(f.out, "--out");
    if (!f.metrics.empty()) check_output_writable(f.metrics, "--metrics");
    check_output_writable(f.checkpoint, "--checkpoint");
  }
  check_input(
      f.batch % dist.world_size == 0,
      "--batch: {}, expected a multiple of the {} processes (WORLD_SIZE): the global "
      "batch is split evenly among them",
      f.batch,
      dist.world_size);
  check_input(f.keep == "best" || f.keep == "last", "--keep: '{}', expected best or last", f.keep);
  check_input(
      f.keep != "best" || f.val_split > 0,
      "--keep best: needs a validation set, pass --val-split F");
  const FusionRule fusion = parse_fusion_rule(f.fusion);
  check_input(
      !f.position_embedding || fusion_rule_has_attention(fusion),
      "--position-embedding: only used by --fusion attention or gated-attention, not {}",
      f.fusion);
  check_fusion_fits(fusion, f.tiled);
  check_trainable(parse_loss_kind(f.loss), fusion);
}

/// The trainer's options that the flags decide (bags and the process group come later).
TrainerOptions trainer_options(const TrainFlags& f) {
  TrainerOptions options;
  options.loss = parse_loss_kind(f.loss);
  options.epochs = f.epochs;
  options.batch = f.batch;
  options.optimizer = {
      parse_optimizer_kind(f.optimizer), f.lr, f.momentum, f.nesterov, f.weight_decay};
  check_optimizer_options(options.optimizer);
  options.schedule.kind = parse_schedule_kind(f.schedule);
  options.schedule.warmup_epochs = f.warmup;
  options.schedule.step_epochs = f.lr_step;
  options.schedule.gamma = f.lr_gamma;
  options.label_smoothing = f.label_smoothing;
  options.clip_grad_norm = f.clip_grad;
  options.ema = f.ema;
  check_schedule_options(options.schedule, options.epochs);
  check_label_smoothing(options.label_smoothing);
  check_ema_decay(options.ema);
  options.seed = f.seed;
  options.keep_best = f.keep == "best";
  options.augment.shift = f.shift;
  options.augment.flip = f.flip;
  options.augment.erase = f.erase;
  options.checkpoint = f.checkpoint;
  options.checkpoint_every = f.checkpoint_every;
  options.resume = f.resume;
  options.stop = &g_stop_signal;
  return options;
}

/// The first `limit` items of `data` (0: all).
Dataset first_items(const Dataset& data, int64_t limit) {
  if (limit <= 0 || limit >= data.size()) return data;
  std::vector<int64_t> index(static_cast<size_t>(limit));
  std::iota(index.begin(), index.end(), int64_t{0});
  return subset(data, index);
}

/// The training and test sets of --data, or of the --features cache.
void load_sets(const TrainFlags& f, TrainData& d) {
  if (!f.features.empty()) {
    d.cache = std::make_shared<FeatureCache>(load_feature_cache(f.features));
    d.train = first_items(d.cache->split("train", f.features + " (train)"), f.limit_train);
    d.test = first_items(d.cache->split("test", f.features + " (test)"), f.limit_test);
    check_input(d.train.size() > 0, "{}: no training images in the feature cache", f.features);
    return;
  }
  DataOptions train_options = data_options(f.data_flags, f.limit_train);
  DataOptions test_options = data_options(f.data_flags, f.limit_test);
  train_options.folder.list_only = test_options.folder.list_only = f.tiled;
  d.train = load_data_reporting(f.data, "train", train_options);
  if (!has_test_split(f.data)) return;
  d.test = load_data_reporting(f.data, "test", test_options);
  check_input(
      align_class_names(d.test, d.train.class_names) || d.test.class_names == d.train.class_names,
      "{}: test classes differ from the training classes",
      f.data);
}

TrainData load_train_data(const TrainFlags& f) {
  TrainData d;
  load_sets(f, d);
  if (f.val_split > 0) {
    std::tie(d.train, d.validation) = stratified_split(d.train, f.val_split, f.seed);
    d.validation.source = (f.features.empty() ? f.data : f.features) + " (validation split)";
  }
  return d;
}

/// The model to build: the cache's (with the head's flags), or one from the flags and data.
ModelConfig model_config(
    const TrainFlags& f, const CLI::App* app, const TrainData& d, TrainerOptions& options) {
  ModelConfig config;
  if (d.cache) {
    config = d.cache->model->config();
    options.bags = d.cache->bags(d.train);
    if (d.eval_set() != nullptr) options.eval_bags = d.cache->bags(*d.eval_set());
  } else {
    config.grid = grid_options(f.grid, app);
    config.image_channels = d.train.channels();
    config.image_h = d.train.height();
    config.image_w = d.train.width();
    config.class_names = d.train.class_names;
    config.class_names.resize(std::max<size_t>(config.class_names.size(), 2));
    if (f.tiled) {
      setup_tiled(f, d, config, options);
    } else {
      config.normalization = compute_normalization(d.train);
    }
    config.backbone.name = f.model;
    config.backbone.num_classes = static_cast<int64_t>(config.class_names.size());
    config.backbone.batch_norm = f.batch_norm;
  }
  config.backbone.dropout = f.dropout;
  config.fusion = parse_fusion_rule(f.fusion);
  config.attention_hidden = f.attention_hidden;
  config.position_embedding = f.position_embedding;
  return config;
}

/// The model of `config` from the run's seed; from a cache, with its frozen feature layers.
PatchClassifier build_model(
    const TrainFlags& f, const ModelConfig& config, const TrainData& d, c10::Device device) {
  torch::manual_seed(f.seed);
  PatchClassifier model = d.cache ? head_model(*d.cache, config) : PatchClassifier(config);
  // A resumed run's weights come from its checkpoint, not from --init again.
  if (!f.init.empty() && f.resume.empty()) load_initial_weights(model, f.init, f.init_new_head);
  model->to(device);
  return model;
}

/// "a, b and c" of the non-empty parts.
std::string joined(const std::vector<std::string>& parts) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    out += (i == 0 ? "" : i + 1 == parts.size() ? " and " : ", ") + parts[i];
  }
  return out;
}

/// What the recipe and the augmentation add to plain training at a constant rate.
void print_recipe(std::ostream& log, const TrainFlags& f) {
  std::vector<std::string> recipe;
  if (f.momentum > 0) {
    recipe.push_back(fmt::format("momentum {}{}", f.momentum, f.nesterov ? " (Nesterov)" : ""));
  }
  if (f.weight_decay > 0) recipe.push_back(fmt::format("weight decay {}", f.weight_decay));
  if (f.schedule == "step") {
    recipe.push_back(fmt::format("rate x{} every {} epochs", f.lr_gamma, f.lr_step));
  } else if (f.schedule != "constant") {
    recipe.push_back(f.schedule + " schedule");
  }
  if (f.warmup > 0) recipe.push_back(fmt::format("{} epochs of warmup", f.warmup));
  if (f.label_smoothing > 0) recipe.push_back(fmt::format("label smoothing {}", f.label_smoothing));
  if (f.clip_grad > 0) recipe.push_back(fmt::format("gradient norm clipped to {}", f.clip_grad));
  if (f.ema > 0) recipe.push_back(fmt::format("weights averaged with decay {}", f.ema));
  if (!recipe.empty()) fmt::print(log, "train: recipe: {}\n", joined(recipe));
  std::vector<std::string> augment;
  if (f.shift > 0) augment.push_back(fmt::format("shifts up to {} pixels", f.shift));
  if (f.flip) augment.push_back("flips");
  if (f.erase > 0) augment.push_back(fmt::format("random erasing p {}", f.erase));
  if (!augment.empty()) fmt::print(log, "train: augmentation: {}\n", joined(augment));
}

/// The run's first lines: the data, the model, the optimizer.
void print_plan(
    std::ostream& log, const TrainFlags& f, const TrainData& d, PatchClassifier& model,
    c10::Device device, int64_t threads) {
  const ModelConfig& config = model->config();
  const std::string sizes =
      d.cache ? fmt::format("large images as their tiles' cached {} features", config.backbone.name)
      : f.tiled ? fmt::format(
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
  fmt::print(
      log,
      "train: {} training, {} validation and {} test {}, {} classes, from {}\n",
      d.train.size(),
      d.validation.size(),
      d.test.size(),
      sizes,
      config.class_names.size(),
      d.cache ? f.features : f.data);
  if (config.tiled) {
    fmt::print(
        log,
        "train: {} on bags of tiles of {} (stride {}, level {}, foreground >= {}) "
        "resized to {}x{}{}; fusion {}, loss {}\n",
        config.backbone.name,
        config.tiles.tile,
        config.tiles.stride > 0 ? config.tiles.stride : config.tiles.tile,
        config.tiles.level < 0 ? std::string("auto") : std::to_string(config.tiles.level),
        config.tiles.min_foreground,
        config.grid.input,
        config.grid.input,
        d.cache        ? ", frozen: only the head learns"
        : f.select > 0 ? fmt::format(", training on the {} best of each bag", f.select)
                       : "",
        f.fusion,
        f.loss);
  } else {
    fmt::print(
        log,
        "train: {} on a {} ({} patch{} per image); fusion {}, loss {}\n",
        f.model,
        model->grid().describe(),
        model->num_patches(),
        model->num_patches() == 1 ? "" : "es",
        f.fusion,
        f.loss);
  }
  fmt::print(
      log,
      "train: device {}, {} threads, {}, batch {}, {} lr {}, {} epochs, seed {}\n",
      device.str(),
      threads,
      f.runtime.precision,
      f.batch,
      f.optimizer,
      f.lr,
      f.epochs,
      f.seed);
  print_recipe(log, f);
  if (!f.init.empty()) {
    fmt::print(
        log,
        "train: starting from the weights of {}{}\n",
        f.init,
        f.init_new_head ? ", with a new classifier" : "");
  }
  log.flush();
}

/// The process group of a data-parallel run (null for one process), announced on `log`.
std::unique_ptr<Distributed> join_group(
    const DistributedConfig& config, const TrainFlags& f, std::ostream& log) {
  if (!config.enabled()) return nullptr;
  fmt::print(
      log,
      "train: data-parallel: {} processes (rendezvous {}:{}, timeout {} s), {} "
      "images of each batch per process\n",
      config.world_size,
      config.master_addr,
      config.master_port,
      f.dist_timeout,
      f.batch / config.world_size);
  log.flush();
  return std::make_unique<Distributed>(config);
}

/// --metrics, written afresh; a resumed run's file starts with the epochs its checkpoint
/// already holds, so that it ends with every epoch of the run, as an uninterrupted one.
std::ofstream open_metrics(const TrainFlags& f, bool writer) {
  std::ofstream metrics;
  if (!writer || f.metrics.empty()) return metrics;
  metrics.open(f.metrics, std::ios::trunc);
  if (f.resume.empty()) return metrics;
  const nlohmann::json history = load_model_training(f.resume).value("history", nlohmann::json());
  if (history.is_array())
    for (const nlohmann::json& m : history) metrics << m.dump() << '\n';
  metrics.flush();
  return metrics;
}

/// Trains with progress on the terminal and one line (and JSON object) per epoch; a stop
/// signal or a peer's failure ends the process after saying where the checkpoint is.
TrainResult run_epochs(
    const TrainFlags& f, PatchClassifier& model, const TrainData& d, const TrainerOptions& options,
    bool writer, std::ostream& log) {
  std::ofstream metrics = open_metrics(f, writer);
  ProgressBar bar("train");
  TrainerCallbacks callbacks;
  if (writer)
    callbacks.on_step = [&](int64_t epoch, int64_t step, int64_t steps, double loss) {
      bar.update(step, steps, fmt::format("epoch {} loss {:.4f}", epoch, loss));
    };
  callbacks.on_epoch = [&](const EpochMetrics& m) {
    bar.clear();
    log << epoch_line(m, f.val_split > 0) << std::endl;
    if (writer) d.tally->say_once("train", f.tiles.tiles.min_foreground);
    if (metrics.is_open()) metrics << epoch_metrics_to_json(m).dump() << std::endl;
  };
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  try {
    return train_model(model, d.train, d.eval_set(), options, callbacks);
  } catch (const DistributedError& e) {
    std::error_code ignored;
    const bool checkpoint = writer && std::filesystem::exists(f.checkpoint, ignored);
    throw DistributedError(fmt::format(
        "{}; no model written{}", e.what(), checkpoint ? "; last checkpoint " + f.checkpoint : ""));
  } catch (const TrainingStopped& stopped) {
    if (!writer) throw Exit{128 + stopped.signal};
    bar.clear();
    fmt::print(
        stderr,
        "train: stopped by signal {} at epoch {} step {}; checkpoint {}; continue with "
        "patchwise train {} --resume {} --out {}\n",
        stopped.signal,
        stopped.epoch,
        stopped.step,
        f.checkpoint,
        source_flags(f),
        f.checkpoint,
        f.out);
    throw Exit{128 + stopped.signal};
  }
}

/// The kept epoch's accuracy on the test split: the last evaluation, or (after
/// validating on a split of the training set) a fresh one, logged.
double final_test_accuracy(
    const TrainFlags& f, PatchClassifier& model, const TrainData& d, const TrainerOptions& options,
    const TrainResult& result, std::ostream& log) {
  if (!(f.val_split > 0 && d.has_test())) return result.history.back().test_accuracy;
  const BagFn test_bags =
      d.cache   ? d.cache->bags(d.test)
      : f.tiled ? bag_reader(d.test, model_bag_options(model->config(), f.tiles.reader), 0)
                : BagFn{};
  Evaluation e = evaluate(model, d.test, options.eval_batch, false, test_bags);
  fmt::print(
      log,
      "train: kept epoch {}; test accuracy {:.4f} ± {:.4f} on {} images\n",
      result.kept_epoch,
      e.accuracy,
      e.accuracy_stderr,
      e.n);
  return e.accuracy;
}

/// Writes the model with its training record, removes the checkpoint, reports.
void save_trained(
    const TrainFlags& f, PatchClassifier& model, const TrainData& d, const TrainResult& result,
    double test_accuracy, std::ostream& log) {
  nlohmann::json epochs = nlohmann::json::array();
  for (const EpochMetrics& m : result.history) epochs.push_back(epoch_metrics_to_json(m));
  nlohmann::json training = {
      {"data", f.data},
      {"features", f.features},
      {"loss", f.loss},
      {"epochs", f.epochs},
      {"batch", f.batch},
      {"lr", f.lr},
      {"optimizer", f.optimizer},
      {"seed", f.seed},
      {"train_images", d.train.size()},
      {"validation_images", d.validation.size()},
      {"val_split", f.val_split},
      {"keep", f.keep},
      {"kept_epoch", result.kept_epoch},
      {"augment", {{"shift", f.shift}, {"flip", f.flip}, {"erase", f.erase}}},
      {"history", epochs},
      {"flags", flags_to_json(f)}};
  save_model(f.out, model, training);
  std::error_code ignored;
  std::filesystem::remove(f.checkpoint, ignored);  // the finished model supersedes it
  fmt::print(log, "train: saved {}\n", f.out);
  if (f.json) {
    print_json(
        {{"model", f.out},
         {"test_accuracy", test_accuracy},
         {"kept_epoch", result.kept_epoch},
         {"history", epochs}});
  }
}

void print_group_summary(const TrainResult& result, std::ostream& log) {
  fmt::print(
      log,
      "train: data-parallel: {} gradient values in {} bucket{}; one allreduce of "
      "all of them {:.2f} ms (median); backward pass with its allreduces {:.2f} ms per "
      "step\n",
      result.gradient_floats,
      result.gradient_buckets,
      result.gradient_buckets == 1 ? "" : "s",
      result.allreduce_ms,
      result.backward_ms);
}

/// This machine's thread count: --threads, or its share of the cores among the
/// data-parallel processes on it.
int64_t train_threads(const TrainFlags& f, const DistributedConfig& dist) {
  RuntimeFlags runtime = f.runtime;
  if (runtime.threads <= 0 && dist.enabled()) {
    const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
    runtime.threads = std::max<int64_t>(1, cores / dist.local_world_size);
  }
  return apply_runtime_flags(runtime);
}

void run_train(TrainFlags f, const CLI::App* app) {
  // torchrun's variables; WORLD_SIZE unset or 1 is a plain one-process run.
  DistributedConfig dist_config = distributed_config_from_env();
  dist_config.timeout_seconds = f.dist_timeout;
  // Rank 0 logs and writes every file; the others only train.
  const bool writer = dist_config.rank == 0;
  resume_flags(f, app);
  apply_recipe(f, app);
  if (f.checkpoint.empty()) f.checkpoint = f.out + ".ckpt";
  check_flags(f, app, dist_config, writer);
  TrainerOptions options = trainer_options(f);
  const c10::Device device = resolve_device(f.runtime.device);
  f.runtime.threads = train_threads(f, dist_config);  // stored: --resume runs with as many

  const TrainData data = load_train_data(f);
  const ModelConfig config = model_config(f, app, data, options);
  PatchClassifier model = build_model(f, config, data, device);
  model->set_precision(runtime_precision(f.runtime, device));

  NullBuffer null_buffer;
  std::ostream silent(&null_buffer);
  std::ostream& log = !writer ? silent : f.json ? std::cerr : std::cout;
  print_plan(log, f, data, model, device, f.runtime.threads);
  std::unique_ptr<Distributed> dist = join_group(dist_config, f, log);
  options.distributed = dist.get();
  options.checkpoint_note = json_text(nlohmann::json{{"flags", flags_to_json(f)}});
  const TrainResult result = run_epochs(f, model, data, options, writer, log);
  if (!writer) return;
  if (dist) print_group_summary(result, log);
  const double accuracy = final_test_accuracy(f, model, data, options, result, log);
  save_trained(f, model, data, result, accuracy, log);
}

}  // namespace

void setup_train(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  CLI::App* cmd = app.add_subcommand(
      "train", "train a patch classifier on a data set (or its head on a feature cache)");
  add_train_flags(cmd, *flags);
  cmd->callback([flags, cmd] {
    flags->tiled = cmd->count("--tile") > 0;
    // Bags have one label for many tiles: the fused loss is the natural default there.
    if ((flags->tiled || !flags->features.empty()) && cmd->count("--loss") == 0) {
      flags->loss = "fused";
    }
    run_train(*flags, cmd);
  });
}

}  // namespace patchwise::cli
