#pragma once
// patchwise train's flags, declared once: one table (train_flags.cpp) gives each flag
// its name, help, default, check, its key in checkpoints, model files and recipes, and
// whether --resume restores it. The command line, a --recipe file and a checkpoint's
// flags all go through it.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common.h"

namespace patchwise::cli {

struct TrainFlags {
  std::string data;
  std::string features;        ///< a feature cache to train the head on, instead of --data
  std::string init;            ///< a model file or PyTorch state dict whose weights start the run
  bool init_new_head = false;  ///< --init: keep the classifier's fresh weights
  std::string recipe;          ///< a JSON file of flag values
  std::string model = "small-cnn";
  GridFlags grid;
  std::string fusion = "mean";
  int64_t attention_hidden = 128;
  bool position_embedding = false;
  std::string loss = "patch";
  int64_t epochs = 10;
  int64_t batch = 64;
  double lr = 1e-3;
  std::string optimizer = "adam";
  double momentum = 0;
  bool nesterov = false;
  double weight_decay = 0;
  std::string schedule = "constant";
  double warmup = -1;
  double lr_step = 30;
  double lr_gamma = 0.1;
  double label_smoothing = 0;
  double clip_grad = 0;
  double ema = 0;
  uint64_t seed = 42;
  bool batch_norm = false;
  double dropout = 0.5;
  int64_t limit_train = 0;
  int64_t limit_test = 0;
  DataFlags data_flags;
  double val_split = 0;
  std::string keep = "last";
  int64_t shift = 0;
  bool flip = false;
  double erase = 0;
  std::string out = "model.pw";
  std::string metrics;
  bool json = false;
  std::string checkpoint;
  int64_t checkpoint_every = 0;
  std::string resume;
  double dist_timeout = 300;
  RuntimeFlags runtime;
  bool tiled = false;  ///< --tile given: images are bags of tiles
  TileFlags tiles;
  int64_t select = 0;
};

/// Adds every flag of `flags` to `cmd` (the shared grid, data, tile and runtime flags
/// through their helpers in common.h), with its help and default.
void add_train_flags(CLI::App* cmd, TrainFlags& flags);

/// The flags that decide what a run trains, by key: stored in checkpoints (so that
/// --resume repeats them) and in the model file's training record.
nlohmann::json flags_to_json(const TrainFlags& flags);

/// --resume: sets every restorable flag that `saved` holds (checkpoints from before a
/// flag existed keep its default), but --epochs and --threads when `app`'s command line
/// gives them. `source` names the checkpoint in errors.
void flags_from_checkpoint(
    const nlohmann::json& saved, TrainFlags& flags, const CLI::App* app, const std::string& source);

/// --recipe: sets the flags that the file names and the command line does not give.
/// InputError naming the file for a key that is not a recipe flag or a value of the
/// wrong type or out of range.
void apply_recipe(TrainFlags& flags, const CLI::App* app);

}  // namespace patchwise::cli
