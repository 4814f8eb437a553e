#pragma once
// Pieces shared by the subcommands: the patch-layout flags, runtime flags,
// JSON output and the progress bar.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "patchwise/data/region.h"
#include "patchwise/data/source.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/patch/bags.h"
#include "patchwise/patch/grid.h"
#include "patchwise/patch/tiles.h"
#include "patchwise/report/prediction.h"

namespace patchwise::cli {

/// --grid, --patch, --stride, --layout, --input as the user typed them.
struct GridFlags {
  std::string grid = "2x2";
  std::string patch = "18";
  std::string stride;
  std::string layout = "grid";
  int64_t input = 32;
};
void add_grid_flags(CLI::App* app, GridFlags& flags);
/// Parses the flags; a --stride without an explicit --grid lets the stride decide the counts.
PatchGridOptions grid_options(const GridFlags& flags, const CLI::App* app);

/// "18" -> (18, 18); "18x14" -> (18, 14). Throws InputError naming `flag`.
std::pair<int64_t, int64_t> parse_size_pair(const std::string& text, const std::string& flag);

/// --threads, --device and --precision.
struct RuntimeFlags {
  int64_t threads = 0;
  std::string device = "auto";
  std::string precision = "fp32";
  std::string kernels = "auto";  ///< models/kernels.h
};
void add_runtime_flags(CLI::App* app, RuntimeFlags& flags);
/// Applies --threads (returning the count set) and --kernels.
int64_t apply_runtime_flags(const RuntimeFlags& flags);
/// The check of --precision's value: parse_precision's, so the names live there alone.
CLI::Validator precision_check();
/// A check that runs `parse` on the value and reports its OptionError's detail, so that
/// the names a flag takes live in its parser alone; `names` is the help's "a|b".
CLI::Validator parse_check(
    const std::function<void(const std::string&)>& parse, const std::string& names);
/// --precision parsed, with a warning on stderr when bf16 will run on a CPU without
/// native bfloat16 arithmetic (slower than fp32 there).
Precision runtime_precision(const RuntimeFlags& flags, c10::Device device);

/// --tile, --tile-stride, --level, --mpp, --min-foreground, --reader, --max-pixels: how
/// large images are opened and tiled (the same flags for tiles, train and predict).
struct TileFlags {
  TileOptions tiles;
  RegionReaderOptions reader;
};
void add_tile_flags(CLI::App* app, TileFlags& flags);
/// --reader and --max-pixels alone: how large images are opened (a tiled model knows its tiles).
void add_reader_flags(CLI::App* app, RegionReaderOptions& reader);

/// --label, --image-size, --strict, --in-memory-limit: how a data set is read.
struct DataFlags {
  std::string label = "fine";
  std::string image_size;
  bool strict = false;
  double in_memory_limit = 2048;  ///< MiB
  int64_t max_classes = 1000;
};
void add_data_flags(CLI::App* app, DataFlags& flags);
DataOptions data_options(const DataFlags& flags, int64_t limit);
/// A warning on stderr naming the unreadable image files skipped in `path` (none: nothing).
void warn_skipped(const std::vector<std::string>& skipped, const std::string& path);
/// load_data, with a warning on stderr naming the image files it skipped.
Dataset load_data_reporting(
    const std::string& path, const std::string& split, const DataOptions& options);

/// --labels-by-index: compare a data set's labels with the model's classes by index.
void add_labels_by_index_flag(CLI::App* app, bool& by_index);
/// Maps `data`'s labels onto the model's classes by name; a class name the model lacks is
/// an error naming it (a misspelt class would otherwise be scored against another), unless
/// `by_index` asks to compare labels by index (then a warning says so).
void match_labels(
    Dataset& data, const ModelConfig& config, const std::string& data_path, bool by_index);

/// load_model, refusing a tiled model: `command` draws or cuts the fixed patch grid.
PatchClassifier load_grid_model(const std::string& path, const std::string& command);

/// Prints `json` on stdout, indented, with a trailing newline.
void print_json(const nlohmann::json& json);

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  void update(int64_t done, int64_t total, const std::string& suffix = "");
  /// Erases the bar so the next line prints cleanly.
  void clear();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
};

}  // namespace patchwise::cli
