#include "patchwise/data/megapixel_mnist.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <opencv2/imgproc.hpp>
#include <random>
#include <thread>

#include "patchwise/base/error.h"
#include "patchwise/data/image.h"
#include "patchwise/data/source.h"

namespace patchwise {
namespace {

constexpr int64_t kSide = 28;  ///< digits and scribbles
constexpr int kPlacementTries = 10000;

using Rng = std::mt19937_64;

int64_t uniform(Rng& rng, int64_t low, int64_t high) {  // [low, high]
  return std::uniform_int_distribution<int64_t>(low, high)(rng);
}

bool overlaps(const Box& a, const Box& b) {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

/// Draws `pattern` (28x28 bytes) at `box` of the canvas by the maximum of both.
void stamp(uint8_t* canvas, int64_t side, const uint8_t* pattern, const Box& box) {
  for (int64_t r = 0; r < kSide; ++r) {
    uint8_t* row = canvas + (box.y + r) * side + box.x;
    const uint8_t* src = pattern + r * kSide;
    for (int64_t c = 0; c < kSide; ++c) row[c] = std::max(row[c], src[c]);
  }
}

Box random_box(Rng& rng, int64_t side) {
  return {uniform(rng, 0, side - kSide), uniform(rng, 0, side - kSide), kSide, kSide};
}

/// Two straight anti-aliased lines between random points of a 28x28 square.
cv::Mat scribble(Rng& rng) {
  cv::Mat pattern = cv::Mat::zeros(kSide, kSide, CV_8UC1);
  for (int line = 0; line < 2; ++line) {
    cv::Point a(
        static_cast<int>(uniform(rng, 0, kSide - 1)), static_cast<int>(uniform(rng, 0, kSide - 1)));
    cv::Point b(
        static_cast<int>(uniform(rng, 0, kSide - 1)), static_cast<int>(uniform(rng, 0, kSide - 1)));
    cv::line(pattern, a, b, cv::Scalar(255), 2, cv::LINE_AA);
  }
  return pattern;
}

/// The digits' indices grouped by class.
std::vector<std::vector<int64_t>> by_class(const Dataset& digits) {
  std::vector<std::vector<int64_t>> groups(static_cast<size_t>(digits.num_classes()));
  const int64_t* labels = digits.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < digits.size(); ++i) groups[static_cast<size_t>(labels[i])].push_back(i);
  for (size_t k = 0; k < groups.size(); ++k) {
    check_input(
        !groups[k].empty(), "{}: no digit of class {}, expected every class", digits.source, k);
  }
  return groups;
}

/// The classes of the canvas's digits: `same` of `label`, the rest of other classes.
std::vector<int64_t> digit_classes(
    Rng& rng, int64_t label, int64_t classes, const MegapixelOptions& o) {
  std::vector<int64_t> out(static_cast<size_t>(o.same), label);
  for (int64_t i = o.same; i < o.digits; ++i) {
    const int64_t other = uniform(rng, 0, classes - 2);
    out.push_back(other >= label ? other + 1 : other);
  }
  return out;
}

/// Boxes for the digits that overlap no other digit.
std::vector<Box> digit_places(Rng& rng, int64_t count, int64_t side) {
  std::vector<Box> boxes;
  for (int tries = 0; static_cast<int64_t>(boxes.size()) < count; ++tries) {
    check_input(
        tries < kPlacementTries,
        "--digits {}: no room for them apart on a canvas of {}",
        count,
        side);
    Box box = random_box(rng, side);
    if (std::none_of(boxes.begin(), boxes.end(), [&](const Box& b) { return overlaps(b, box); })) {
      boxes.push_back(box);
    }
  }
  return boxes;
}

}  // namespace

void check_megapixel_options(const MegapixelOptions& o) {
  check_option(o.size >= 2 * kSide, "size", "{}, expected at least {}", o.size, 2 * kSide);
  check_option(
      o.digits >= 1 && o.same >= 1 && 2 * o.same > o.digits,
      "same",
      "{} of {} digits, expected a strict majority of at least 1",
      o.same,
      o.digits);
  // Digits at random places need room: at most a quarter of the canvas's 28x28 cells.
  const int64_t cells = (o.size / kSide) * (o.size / kSide);
  check_option(
      o.digits * 4 <= cells,
      "digits",
      "{} on a canvas of {}, expected at most {}",
      o.digits,
      o.size,
      cells / 4);
  check_option(o.scribbles >= 0, "scribbles", "{}, expected >= 0", o.scribbles);
}

MegapixelCanvas make_megapixel_canvas(
    const Dataset& digits, const MegapixelOptions& o, int64_t index) {
  check_megapixel_options(o);
  check_input(
      digits.in_memory() && digits.channels() == 1 && digits.height() == kSide &&
          digits.width() == kSide && digits.num_classes() >= 2,
      "{}: digits of {}x{} with {} channel(s) in {} classes, expected 28x28 grey in at "
      "least 2",
      digits.source,
      digits.height(),
      digits.width(),
      digits.channels(),
      digits.num_classes());
  const auto groups = by_class(digits);
  Rng rng(o.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(index));
  MegapixelCanvas c;
  c.image = torch::zeros({1, o.size, o.size}, torch::kUInt8);
  uint8_t* canvas = c.image.data_ptr<uint8_t>();
  for (int64_t i = 0; i < o.scribbles; ++i) {
    const cv::Mat pattern = scribble(rng);
    stamp(canvas, o.size, pattern.data, random_box(rng, o.size));
  }
  c.label = index % digits.num_classes();
  c.digit_classes = digit_classes(rng, c.label, digits.num_classes(), o);
  c.digit_boxes = digit_places(rng, o.digits, o.size);
  const uint8_t* pixels = digits.images.data_ptr<uint8_t>();
  for (size_t i = 0; i < c.digit_boxes.size(); ++i) {
    const auto& group = groups[static_cast<size_t>(c.digit_classes[i])];
    const int64_t item =
        group[static_cast<size_t>(uniform(rng, 0, static_cast<int64_t>(group.size()) - 1))];
    stamp(canvas, o.size, pixels + item * kSide * kSide, c.digit_boxes[i]);
  }
  return c;
}

namespace {

namespace fs = std::filesystem;

void make_folder(const fs::path& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  check_input(fs::is_directory(dir), "{}: cannot create the folder", dir.string());
}

/// Canvases 0..count-1 of one split into out/<split>/<class>/<index>.png, on `threads`
/// threads; one CSV row per canvas with its digits' classes and boxes.
void write_canvases(
    const Dataset& digits, const MegapixelOptions& canvas, int64_t count, const std::string& split,
    const std::string& out, const MegapixelDatasetOptions& options, std::ofstream& csv) {
  std::atomic<int64_t> next{0};
  std::mutex lock;  // the CSV and the progress
  std::exception_ptr error;
  int64_t done = 0;
  auto work = [&] {
    try {
      for (int64_t i = next++; i < count && !error; i = next++) {
        MegapixelCanvas c = make_megapixel_canvas(digits, canvas, i);
        const std::string file = fmt::format(
            "{}/{}/{:05d}.png", split, digits.class_names[static_cast<size_t>(c.label)], i);
        make_folder((fs::path(out) / file).parent_path());
        write_image((fs::path(out) / file).string(), c.image);
        std::string row = fmt::format("{},{},{}", file, split, c.label);
        for (size_t d = 0; d < c.digit_boxes.size(); ++d) {
          const Box& b = c.digit_boxes[d];
          row += fmt::format(",{} {} {} {} {}", c.digit_classes[d], b.x, b.y, b.w, b.h);
        }
        std::lock_guard<std::mutex> guard(lock);
        csv << row << "\n";
        ++done;
        if (options.progress) options.progress(split, done, count);
      }
    } catch (...) {
      std::lock_guard<std::mutex> guard(lock);
      if (!error) error = std::current_exception();
    }
  };
  const int64_t threads = options.threads > 0
                              ? options.threads
                              : std::max<int64_t>(1, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) pool.emplace_back(work);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

std::pair<Dataset, Dataset> split_digits(
    const Dataset& all, int64_t train, int64_t test, uint64_t seed) {
  check_input(
      test > 0 && train > 0 && test + train <= all.size(),
      "--train {} --test {}: {} digits in {}, expected positive counts that fit",
      train,
      test,
      all.size(),
      all.source);
  auto [rest, test_set] =
      stratified_split(all, static_cast<double>(test) / static_cast<double>(all.size()), seed);
  if (train >= rest.size()) return {rest, test_set};
  Dataset train_set =
      stratified_split(
          rest, static_cast<double>(train) / static_cast<double>(rest.size()), seed + 1)
          .second;
  return {train_set, test_set};
}

void write_megapixel_dataset(
    const Dataset& all, const std::string& out, const MegapixelDatasetOptions& options) {
  check_megapixel_options(options.canvas);
  make_folder(out);
  auto [train_digits, test_digits] =
      split_digits(all, all.size() - all.size() / 5, all.size() / 5, 42);
  std::ofstream csv(fs::path(out) / "canvases.csv");
  check_input(csv.good(), "{}/canvases.csv: cannot write", out);
  csv << "file,split,label,digits (class x y w h)...\n";
  MegapixelOptions test_canvas = options.canvas;
  test_canvas.seed = options.canvas.seed + 1;  // other draws than the training canvases'
  write_canvases(train_digits, options.canvas, options.train, "train", out, options, csv);
  write_canvases(test_digits, test_canvas, options.test, "test", out, options, csv);
}

}  // namespace patchwise
