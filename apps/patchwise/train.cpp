// patchwise train: fits a PatchClassifier on an IDX data set and saves it.

#include <cmath>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <fmt/ostream.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "commands.h"
#include "common.h"
#include "patchwise/core/error.h"
#include "patchwise/core/files.h"
#include "patchwise/core/model_file.h"
#include "patchwise/core/runtime.h"
#include "patchwise/data/idx.h"
#include "patchwise/train/trainer.h"

namespace patchwise::cli {
namespace {

struct TrainFlags {
  std::string data;
  std::string model = "small-cnn";
  GridFlags grid;
  std::string fusion = "mean";
  int64_t attention_hidden = 128;
  bool position_embedding = false;
  std::string loss = "patch";
  int64_t epochs = 10;
  int64_t batch = 64;
  double lr = 1e-3;
  uint64_t seed = 42;
  bool batch_norm = false;
  double dropout = 0.5;
  int64_t limit_train = 0;
  int64_t limit_test = 0;
  std::string out = "model.pw";
  std::string metrics;
  bool json = false;
  RuntimeFlags runtime;
};

nlohmann::json metrics_json(const EpochMetrics& m) {
  auto number = [](double v) { return std::isnan(v) ? nlohmann::json() : nlohmann::json(v); };
  return {{"epoch", m.epoch},
          {"loss", m.loss},
          {"accuracy", m.accuracy},
          {"test_loss", number(m.test_loss)},
          {"test_accuracy", number(m.test_accuracy)},
          {"seconds", m.seconds},
          {"images_per_second", m.images_per_second}};
}

std::string epoch_line(const EpochMetrics& m) {
  std::string line = fmt::format("Epoch {:>2} Loss: {:.3f} Acc: {:.3f}%", m.epoch, m.loss,
                                 100.0 * m.accuracy);
  if (!std::isnan(m.test_accuracy)) {
    line += fmt::format(" TLoss: {:.3f} TAcc: {:.3f}%", m.test_loss, 100.0 * m.test_accuracy);
  }
  return line + fmt::format("  ({:.1f} s, {:.0f} images/s)", m.seconds, m.images_per_second);
}

void run_train(const TrainFlags& f, const CLI::App* app) {
  // Everything the flags alone decide is checked before any data is read.
  check_output_writable(f.out, "--out");
  if (!f.metrics.empty()) check_output_writable(f.metrics, "--metrics");
  PatchGridOptions grid = grid_options(f.grid, app);
  ModelConfig config;
  config.grid = grid;
  config.fusion = parse_fusion_rule(f.fusion);
  config.attention_hidden = f.attention_hidden;
  config.position_embedding = f.position_embedding;
  check_input(!f.position_embedding || fusion_rule_is_learned(config.fusion),
              "--position-embedding: only used by --fusion attention or gated-attention, not {}",
              f.fusion);
  TrainerOptions options;
  options.loss = parse_loss_kind(f.loss);
  check_trainable(options.loss, config.fusion);
  options.epochs = f.epochs;
  options.batch = f.batch;
  options.lr = f.lr;
  options.seed = f.seed;
  const c10::Device device = resolve_device(f.runtime.device);
  const int64_t threads = set_threads(f.runtime.threads);

  Dataset train = load_idx_split(f.data, "train", f.limit_train);
  Dataset test = load_idx_split(f.data, "t10k", f.limit_test);
  config.image_channels = train.channels();
  config.image_h = train.height();
  config.image_w = train.width();
  config.class_names = train.class_names;
  config.class_names.resize(std::max<size_t>(config.class_names.size(), 2));
  config.normalization = compute_normalization(train.images);
  config.backbone.name = f.model;
  config.backbone.num_classes = static_cast<int64_t>(config.class_names.size());
  config.backbone.batch_norm = f.batch_norm;
  config.backbone.dropout = f.dropout;

  torch::manual_seed(f.seed);
  PatchClassifier model(config);
  model->to(device);

  std::ostream& log = f.json ? std::cerr : std::cout;
  fmt::print(log, "train: {} training and {} test images of {}x{}x{}, {} classes, from {}\n",
             train.size(), test.size(), train.height(), train.width(), train.channels(),
             config.class_names.size(), f.data);
  fmt::print(log, "train: {} on a {} ({} patch{} per image); fusion {}, loss {}\n", f.model,
             model->grid().describe(), model->num_patches(), model->num_patches() == 1 ? "" : "es",
             f.fusion, f.loss);
  fmt::print(log, "train: device {}, {} threads, batch {}, lr {}, {} epochs, seed {}\n",
             device.str(), threads, f.batch, f.lr, f.epochs, f.seed);
  log.flush();

  std::ofstream metrics;
  if (!f.metrics.empty()) metrics.open(f.metrics, std::ios::trunc);
  ProgressBar bar("train");
  TrainerCallbacks callbacks;
  callbacks.on_step = [&](int64_t epoch, int64_t step, int64_t steps, double loss) {
    bar.update(step, steps, fmt::format("epoch {} loss {:.4f}", epoch, loss));
  };
  callbacks.on_epoch = [&](const EpochMetrics& m) {
    bar.clear();
    log << epoch_line(m) << std::endl;
    if (metrics.is_open()) metrics << metrics_json(m).dump() << std::endl;
  };
  std::vector<EpochMetrics> history = train_model(model, train, &test, options, callbacks);

  nlohmann::json epochs = nlohmann::json::array();
  for (const EpochMetrics& m : history) epochs.push_back(metrics_json(m));
  nlohmann::json training = {{"data", f.data},
                             {"loss", f.loss},
                             {"epochs", f.epochs},
                             {"batch", f.batch},
                             {"lr", f.lr},
                             {"seed", f.seed},
                             {"train_images", train.size()},
                             {"history", epochs}};
  save_model(f.out, model, training);
  fmt::print(log, "train: saved {}\n", f.out);
  if (f.json) {
    print_json({{"model", f.out},
                {"test_accuracy", history.back().test_accuracy},
                {"history", epochs}});
  }
}

}  // namespace

void setup_train(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  CLI::App* cmd = app.add_subcommand("train", "train a patch classifier on an IDX data set");
  cmd->add_option("--data", flags->data,
                  "folder with train-/t10k- images and labels in IDX format (.gz or plain)")
      ->required();
  cmd->add_option("--model", flags->model, "backbone: small-cnn or vgg16");
  add_grid_flags(cmd, flags->grid);
  cmd->add_option("--fusion", flags->fusion,
                  "fusion rule: mean, gmean, max, vote, attention or gated-attention");
  cmd->add_option("--attention-hidden", flags->attention_hidden,
                  "hidden width of the learned fusion rules")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--position-embedding", flags->position_embedding,
                "learned per-position embedding in the attention scores");
  cmd->add_option("--loss", flags->loss, "loss: patch, fused or both");
  cmd->add_option("--epochs", flags->epochs, "passes over the training set")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch", flags->batch, "images per step")->check(CLI::PositiveNumber);
  cmd->add_option("--lr", flags->lr, "Adam's learning rate")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", flags->seed, "seed of weights, data order and dropout");
  cmd->add_flag("--batch-norm", flags->batch_norm, "batch normalization after each convolution");
  cmd->add_option("--dropout", flags->dropout, "dropout before the last layer (small-cnn)")
      ->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--limit-train", flags->limit_train, "use the first N training images; 0: all")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--limit-test", flags->limit_test, "use the first N test images; 0: all")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--out,-o", flags->out, "model file to write");
  cmd->add_option("--metrics", flags->metrics, "write one JSON object per epoch to this file");
  cmd->add_flag("--json", flags->json, "print a JSON summary on stdout (logs go to stderr)");
  add_runtime_flags(cmd, flags->runtime);
  cmd->callback([flags, cmd] { run_train(*flags, cmd); });
}

}  // namespace patchwise::cli
