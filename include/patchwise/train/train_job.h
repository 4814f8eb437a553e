#pragma once
// A training run as the library runs it for `patchwise train`, in named steps: every rule
// between the options checked before any data is read (TrainJob's constructor), the data
// read and the model built from the options and the data (prepare), the epochs (train),
// the kept epoch scored on the test split (final_test), and the model file written with
// its training record (save). The job never prints: the caller reports each step.

#include <c10/core/Device.h>

#include <cstdint>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "patchwise/base/precision.h"
#include "patchwise/data/dataset.h"
#include "patchwise/data/region.h"
#include "patchwise/data/source.h"
#include "patchwise/model/evaluation.h"
#include "patchwise/model/model_file.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/patch/bags.h"
#include "patchwise/train/trainer.h"

namespace patchwise {

struct FeatureCache;

struct TrainJobOptions {
  std::string data;          ///< a data set (data/source.h), or
  std::string features;      ///< a feature cache (model/feature_cache.h): only its head trains
  DataOptions data_options;  ///< how `data` is read (its limit is limit_train's)
  int64_t limit_train = 0;   ///< the first N training images; 0: all
  int64_t limit_test = 0;    ///< the first N test images; 0: all
  double val_split = 0;      ///< stratified share of the training set held out
  double in_memory_limit_mb = 2048;  ///< tiled: bags kept in memory, per set
  /// The model to build: grid, backbone (name, batch norm, dropout), fusion, attention,
  /// tiles. The data fill in the image size, channels, classes and normalization; a
  /// feature cache gives its own model, of which the dropout and fusion options apply.
  ModelConfig model;
  RegionReaderOptions reader;  ///< tiled: how the images are opened
  std::string init;            ///< weights that start the run (model/torch_import.h)
  bool init_new_head = false;  ///< init: the classifier starts fresh
  TrainerOptions trainer;      ///< checkpoint defaults to out + ".ckpt"
  /// The checkpoint `trainer.resume` names, already read (its training record decides
  /// the run's options); null: the trainer reads it.
  std::shared_ptr<const ModelFile> resume_file;
  int64_t world_size = 1;  ///< processes of a data-parallel run
  c10::Device device = c10::Device(c10::kCPU);
  Precision precision = Precision::kFloat32;
  std::string out = "model.pw";  ///< the model file to write
  /// One JSON object per epoch, written afresh; a resumed run's file starts with the
  /// epochs its checkpoint holds, so that it ends with every epoch of the run. Empty: none.
  std::string metrics;
  /// Stored in the model file's "training" section and in every checkpoint (the flags
  /// that repeat the run), beside the history.
  nlohmann::json record = nlohmann::json::object();
};

/// The sets a run trains and scores on.
struct TrainSets {
  Dataset train;
  Dataset validation;                   ///< val_split's share of the training set; empty without it
  Dataset test;                         ///< empty when the data has no test split
  std::shared_ptr<FeatureCache> cache;  ///< features: the cache the sets come from
  std::vector<std::string> skipped;     ///< image files the data set could not read
  /// Tiled: how the background filter fared on the training images.
  std::shared_ptr<FilterTally> tally = std::make_shared<FilterTally>();

  bool has_test() const { return test.size() > 0; }
  /// What each epoch is scored on: the validation split, else the test split, else none.
  const Dataset* eval_set() const;
};

class TrainJob {
 public:
  /// Checks every rule between the options (OptionError naming the option, InputError):
  /// one source, init and features, keep best and a validation split, the fusion with the
  /// loss, the tiles and the position embedding, the trainer's own rules and the batch
  /// against the world size.
  explicit TrainJob(TrainJobOptions options);

  /// Reads the sets and builds the model: seeded, initialized from `init`, on the device,
  /// at the precision.
  void prepare();
  /// Runs the epochs; `group` is this process's data-parallel group (null: one process).
  TrainResult train(const TrainerCallbacks& callbacks, Distributed* group = nullptr);
  /// After validating on a split of the training set: the kept weights scored afresh on
  /// the test split. nullopt when the last epoch's score is already the test score, or
  /// there is no test split.
  std::optional<Evaluation> final_test();
  /// Writes the model file with the record and the history; removes the checkpoint.
  /// Returns the history as JSON, one object per epoch.
  nlohmann::json save(const TrainResult& result);

  /// The run's first lines, after prepare: the data, the model, the optimizer, the
  /// recipe and the augmentation, and the starting weights (train_plan.cpp).
  std::vector<std::string> plan(int64_t threads) const;

  const TrainJobOptions& options() const { return options_; }
  const TrainSets& sets() const { return sets_; }
  PatchClassifier& model() { return model_; }

 private:
  void load_sets();
  ModelConfig model_config();
  void setup_tiled(ModelConfig& config);
  std::ofstream open_metrics() const;

  TrainJobOptions options_;
  TrainSets sets_;
  PatchClassifier model_{nullptr};
};

/// The line `patchwise train` prints after each epoch: its loss and accuracy, and those on
/// the validation (V) or test (T) set when it was scored (train_plan.cpp).
std::string epoch_line(const EpochMetrics& m, bool validation);
/// What a data-parallel run's gradient exchange cost, one line.
std::string data_parallel_line(const TrainResult& result);

/// The epochs already run that a checkpoint's training record holds, one JSON object each
/// (empty for a fresh run or a record without them).
std::vector<nlohmann::json> checkpoint_history(const nlohmann::json& training);

}  // namespace patchwise
