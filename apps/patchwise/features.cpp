// patchwise features: the feature cache (model/feature_cache.h) of a data set of large
// images under a tiled model's frozen backbone, for `train --features`.

#include <fmt/format.h>
#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/base/runtime.h"
#include "patchwise/data/source.h"
#include "patchwise/model/feature_cache.h"
#include "patchwise/model/model_file.h"
#include "patchwise/models/backbone.h"
#include "patchwise/patch/bags.h"

namespace patchwise::cli {
namespace {

struct FeaturesFlags {
  std::string model;
  std::string data;
  std::string out = "features.pwf";
  DataFlags data_flags;
  int64_t limit_train = 0;
  int64_t limit_test = 0;
  RegionReaderOptions reader;
  bool json = false;
  RuntimeFlags runtime;
};

/// `split` of the data set as a list of files, with the model's class order.
Dataset load_split(
    const FeaturesFlags& f, const std::string& split, int64_t limit, const ModelConfig& config) {
  DataOptions options = data_options(f.data_flags, limit);
  options.folder.list_only = true;  // each image is read tile by tile
  Dataset data = load_data_reporting(f.data, split, options);
  check_input(
      align_class_names(data, config.class_names) || data.class_names == config.class_names,
      "{}: classes {} differ from the model's {}",
      f.data,
      fmt::join(data.class_names, ","),
      fmt::join(config.class_names, ","));
  check_dataset_fits(config, data);
  return data;
}

void run_features(const FeaturesFlags& f) {
  const c10::Device device = resolve_device(f.runtime.device);
  const int64_t threads = apply_runtime_flags(f.runtime);
  check_output_writable(f.out, "--out");
  PatchClassifier model = load_model(f.model);
  const ModelConfig& config = model->config();
  check_input(
      config.tiled,
      "{}: not a tiled model, expected one trained on large images with --tile (its "
      "backbone and tiles make the features)",
      f.model);
  model->to(device);
  model->set_precision(runtime_precision(f.runtime, device));
  Dataset train = load_split(f, "train", f.limit_train, config);
  Dataset test;
  std::vector<CacheSet> sets{{"train", &train}};
  if (has_test_split(f.data)) {
    test = load_split(f, "test", f.limit_test, config);
    sets.emplace_back("test", &test);
  }
  std::ostream& log = f.json ? std::cerr : std::cout;
  fmt::print(
      log,
      "features: {} training and {} test images of {}, tiles of {} under {}'s {} ({} "
      "features per tile), {} threads on {}\n",
      train.size(),
      test.size(),
      f.data,
      config.tiles.tile,
      f.model,
      config.backbone.name,
      model->backbone().feature_dim(),
      threads,
      device.str());
  log.flush();
  ProgressBar bar("features");
  const auto start = std::chrono::steady_clock::now();
  FilterTally tally;
  FeatureCache cache = compute_feature_cache(
      model, sets, f.reader, [&](int64_t done, int64_t all) { bar.update(done, all); }, &tally);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bar.clear();
  tally.say_once("features", model->config().tiles.min_foreground);
  save_feature_cache(f.out, cache);
  const int64_t tiles = cache.features.size(0);
  const auto bytes = static_cast<int64_t>(std::filesystem::file_size(f.out));
  fmt::print(
      log,
      "features: {} images, {} tiles in {:.1f} s ({:.0f} tiles/s); saved {} ({:.1f} MiB)\n",
      cache.images(),
      tiles,
      seconds,
      static_cast<double>(tiles) / std::max(seconds, 1e-9),
      f.out,
      static_cast<double>(bytes) / 1048576.0);
  if (f.json) {
    print_json(
        {{"features", f.out},
         {"model", f.model},
         {"data", f.data},
         {"train_images", train.size()},
         {"test_images", test.size()},
         {"tiles", tiles},
         {"feature_dim", cache.features.size(1)},
         {"seconds", seconds},
         {"bytes", bytes}});
  }
}

}  // namespace

void setup_features(CLI::App& app) {
  auto flags = std::make_shared<FeaturesFlags>();
  CLI::App* cmd = app.add_subcommand(
      "features",
      "cache every tile's backbone features of a set of large images, to train a head on "
      "(train --features)");
  cmd->add_option("--model,-m", flags->model, "tiled model whose backbone makes the features")
      ->required();
  cmd->add_option("--data", flags->data, "image folder of large images (train/ and test/)")
      ->required();
  cmd->add_option("--out,-o", flags->out, "feature cache file to write")->capture_default_str();
  add_data_flags(cmd, flags->data_flags);
  cmd->add_option("--limit-train", flags->limit_train, "the first N training images; 0: all")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--limit-test", flags->limit_test, "the first N test images; 0: all")
      ->check(CLI::NonNegativeNumber);
  add_reader_flags(cmd, flags->reader);
  cmd->add_flag("--json", flags->json, "print a JSON summary on stdout (logs go to stderr)");
  add_runtime_flags(cmd, flags->runtime);
  cmd->callback([flags] { run_features(*flags); });
}

}  // namespace patchwise::cli
