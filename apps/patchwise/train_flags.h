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
#include "patchwise/train/train_job.h"

namespace patchwise::cli {

/// What `patchwise train` is told. The table's rows set the run's options in `job`
/// directly (a new trainer option is its field and its row); the shared flag groups of
/// common.h are mapped into `job` by finish_train_job.
struct TrainFlags {
  TrainJobOptions job;
  std::string recipe;  ///< a JSON file of flag values
  GridFlags grid;
  DataFlags data_flags;
  TileFlags tiles;
  RuntimeFlags runtime;
  bool json = false;
  double dist_timeout = 300;  ///< seconds, data-parallel runs
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

/// --resume: reads the checkpoint once (kept in flags.job.resume_file for the trainer),
/// whose flags replace this command line's, except the output, --epochs, --threads, and
/// --data or --features when given.
void resume_flags(TrainFlags& flags, const CLI::App* app);

/// With --features the backbone, its input and its tiles come from the cache: InputError
/// naming a flag that sets them.
void check_feature_flags(const TrainFlags& flags, const CLI::App* app);

}  // namespace patchwise::cli
