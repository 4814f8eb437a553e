#include "common.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/base/json_text.h"
#include "patchwise/base/runtime.h"
#include "patchwise/model/model_file.h"
#include "patchwise/models/kernels.h"

namespace patchwise::cli {

std::pair<int64_t, int64_t> parse_size_pair(const std::string& text, const std::string& flag) {
  auto parse_one = [&](const std::string& part) -> int64_t {
    check_input(
        !part.empty() && part.size() <= 9 &&
            part.find_first_not_of("0123456789") == std::string::npos,
        "{}: '{}' is not a size, expected N or NxM with positive integers",
        flag,
        text);
    int64_t value = std::stoll(part);
    check_input(value > 0, "{}: '{}' has a zero size, expected positive integers", flag, text);
    return value;
  };
  const size_t x = text.find('x');
  if (x == std::string::npos) {
    int64_t v = parse_one(text);
    return {v, v};
  }
  return {parse_one(text.substr(0, x)), parse_one(text.substr(x + 1))};
}

void add_grid_flags(CLI::App* app, GridFlags& flags) {
  app->add_option("--grid", flags.grid, "patch grid, ROWSxCOLS (ignored by five-crop/ten-crop)");
  app->add_option("--patch", flags.patch, "patch size in image pixels, P or HxW");
  app->add_option(
      "--stride",
      flags.stride,
      "stride S or SHxSW (TensorFlow VALID rule); default: outer patches flush "
      "with the borders");
  app->add_option("--layout", flags.layout, "patch layout: grid, five-crop or ten-crop");
  app->add_option("--input", flags.input, "side of the backbone input each patch is resized to");
}

PatchGridOptions grid_options(const GridFlags& flags, const CLI::App* app) {
  PatchGridOptions o;
  o.layout = parse_patch_layout(flags.layout);
  std::tie(o.patch_h, o.patch_w) = parse_size_pair(flags.patch, "--patch");
  check_input(flags.input > 0, "--input: {}, expected a positive size", flags.input);
  o.input = flags.input;
  if (o.layout != PatchLayout::kGrid) {
    check_input(flags.stride.empty(), "--stride: not used by --layout {}", flags.layout);
    o.rows = 1;
    o.cols = o.layout == PatchLayout::kFiveCrop ? 5 : 10;
    return o;
  }
  std::tie(o.rows, o.cols) = parse_size_pair(flags.grid, "--grid");
  if (!flags.stride.empty()) {
    std::tie(o.stride_h, o.stride_w) = parse_size_pair(flags.stride, "--stride");
    if (app->count("--grid") == 0) o.rows = o.cols = 0;  // the stride decides
  }
  return o;
}

PatchClassifier load_grid_model(const std::string& path, const std::string& command) {
  PatchClassifier model = load_model(path);
  check_input(
      !model->config().tiled,
      "--model: {} is a tiled model (bags of tiles); {} works on the fixed patch grid, "
      "expected a grid model (predict and eval take tiled ones)",
      path,
      command);
  return model;
}

void add_runtime_flags(CLI::App* app, RuntimeFlags& flags) {
  app->add_option("--threads", flags.threads, "CPU threads; 0: OMP_NUM_THREADS, else one per core")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--device", flags.device, "auto, cpu or cuda");
  app->add_option(
         "--precision",
         flags.precision,
         "the backbone's arithmetic: fp32, or bf16 (autocast: convolutions and matrix products "
         "in bfloat16, the rest in float32)")
      ->check(precision_check())
      ->capture_default_str();
  app->add_option(
         "--kernels",
         flags.kernels,
         "how the CPU runs convolutions: auto (oneDNN's blocked layout where the processor has "
         "kernels for it, with Winograd on AVX-512: small-cnn and VGG16 evaluate on it, "
         "residual backbones train on it and evaluate on it where Winograd serves) or aten "
         "(LibTorch's kernels always, as PyTorch computes); the same function, rounded "
         "differently")
      ->check(parse_check([](const std::string& name) { parse_cpu_kernels(name); }, "auto|aten"))
      ->capture_default_str();
}

int64_t apply_runtime_flags(const RuntimeFlags& flags) {
  set_cpu_kernels(parse_cpu_kernels(flags.kernels));
  return set_threads(flags.threads);
}

CLI::Validator parse_check(
    const std::function<void(const std::string&)>& parse, const std::string& names) {
  return CLI::Validator(
      [parse](std::string& name) {
        try {
          parse(name);
          return std::string();
        } catch (const OptionError& e) {
          return e.detail();
        }
      },
      names);
}

CLI::Validator precision_check() {
  return parse_check([](const std::string& name) { parse_precision(name); }, "fp32|bf16");
}

Precision runtime_precision(const RuntimeFlags& flags, c10::Device device) {
  const Precision p = parse_precision(flags.precision);
  if (p == Precision::kBFloat16 && device.is_cpu() && !cpu_has_native_bf16()) {
    fmt::print(
        stderr,
        "patchwise: warning: --precision bf16 on a processor without AVX-512 BF16 or AMX: "
        "LibTorch converts around every product, expect it slower than fp32\n");
  }
  return p;
}

void add_tile_flags(CLI::App* app, TileFlags& f) {
  app->add_option("--tile", f.tiles.tile, "tile side in pixels of the chosen level")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--tile-stride", f.tiles.stride, "pixels between tiles; 0: the tile side")
      ->check(CLI::NonNegativeNumber);
  auto* level = app->add_option("--level", f.tiles.level, "pyramid level to tile (0: full size)")
                    ->check(CLI::NonNegativeNumber);
  app->add_option("--mpp", f.tiles.mpp, "tile the level nearest to this many microns per pixel")
      ->check(CLI::PositiveNumber)
      ->excludes(level);
  app->add_option(
         "--min-foreground",
         f.tiles.min_foreground,
         "keep tiles with at least this foreground fraction (Otsu mask); 0: all")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app->add_option(
         "--mask-side",
         f.tiles.mask_side,
         "longer side of the foreground mask's thumbnail; 0: about 8 mask pixels "
         "per tile")
      ->check(CLI::Range(int64_t{0}, int64_t{16384}));
  app->add_flag(
      "--mask-cleanup,!--no-mask-cleanup",
      f.tiles.cleanup,
      "close and open the mask (fills pinholes, drops specks; default), or not "
      "(thin strokes)");
  add_reader_flags(app, f.reader);
}

void add_reader_flags(CLI::App* app, RegionReaderOptions& reader) {
  app->add_option(
      "--reader",
      reader.reader,
      "large images: openslide, tiff or vips; default: the first that opens it");
  app->add_option(
         "--max-pixels",
         reader.max_pixels,
         "largest image decoded whole (PNG, JPEG, ...); 0: no limit")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

void add_data_flags(CLI::App* app, DataFlags& flags) {
  app->add_option("--label", flags.label, "CIFAR-100 labels: fine or coarse");
  app->add_option(
      "--image-size",
      flags.image_size,
      "resize every image of an image folder to HxW (else all must match)");
  app->add_flag("--strict", flags.strict, "an unreadable image file is an error, not skipped");
  app->add_option(
         "--in-memory-limit",
         flags.in_memory_limit,
         "MiB of decoded images an image folder or manifest may hold in memory; a "
         "larger set is decoded from its files batch by batch (0: no limit)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option(
         "--max-classes",
         flags.max_classes,
         "refuse a data set of more classes (a label column of free text would make "
         "evaluation's K x K tables outgrow memory)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

DataOptions data_options(const DataFlags& flags, int64_t limit) {
  DataOptions o;
  o.limit = limit;
  o.max_classes = flags.max_classes;
  check_input(
      flags.label == "fine" || flags.label == "coarse",
      "--label: '{}', expected fine or coarse",
      flags.label);
  o.cifar_label = flags.label == "fine" ? CifarLabel::kFine : CifarLabel::kCoarse;
  if (!flags.image_size.empty()) {
    std::tie(o.folder.height, o.folder.width) = parse_size_pair(flags.image_size, "--image-size");
  }
  o.folder.strict = flags.strict;
  o.folder.memory_limit = static_cast<int64_t>(std::ceil(flags.in_memory_limit * 1048576.0));
  return o;
}

void add_labels_by_index_flag(CLI::App* app, bool& by_index) {
  app->add_flag(
      "--labels-by-index",
      by_index,
      "compare the data's labels with the model's classes by index when their names differ "
      "(by default a class name the model lacks is an error)");
}

void match_labels(
    Dataset& data, const ModelConfig& config, const std::string& data_path, bool by_index) {
  if (data.class_names == config.class_names || align_class_names(data, config.class_names)) {
    return;
  }
  check_input(
      by_index,
      "--data: class '{}' of {} is not among the model's {} classes ({}); expected the model's "
      "class names, or --labels-by-index to compare labels by index",
      printable(first_unknown_class_name(data, config.class_names)),
      printable(data_path),
      config.class_names.size(),
      printable(fmt::format("{}", fmt::join(config.class_names, ", "))));
  check_dataset_fits(config, data);  // an error makes the warning moot
  fmt::print(
      stderr,
      "warning: {}: class names differ from the model's; comparing labels by index "
      "(--labels-by-index)\n",
      data_path);
}

void warn_skipped(const std::vector<std::string>& skipped, const std::string& path) {
  if (skipped.empty()) return;
  constexpr size_t kNamed = 5;
  std::string names;
  for (size_t i = 0; i < std::min(kNamed, skipped.size()); ++i) {
    names += (i ? ", " : "") + skipped[i];
  }
  if (skipped.size() > kNamed) names += ", ...";
  fmt::print(
      stderr,
      "warning: skipped {} unreadable image file(s) in {}: {} (--strict makes this an error)\n",
      skipped.size(),
      path,
      names);
}

Dataset load_data_reporting(
    const std::string& path, const std::string& split, const DataOptions& options) {
  std::vector<std::string> skipped;
  Dataset data = load_data(path, split, options, &skipped);
  warn_skipped(skipped, path);
  return data;
}

void print_json(const nlohmann::json& json) { std::cout << json_text(json, 2) << std::endl; }

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), enabled_(isatty(STDERR_FILENO) != 0) {}

void ProgressBar::update(int64_t done, int64_t total, const std::string& suffix) {
  if (!enabled_ || total <= 0) return;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(kWidth * done / total);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < kWidth) bar += '>';
  bar.resize(kWidth, ' ');
  fmt::print(stderr, "\r{} [{}] {:>5}/{:<5} {}", label_, bar, done, total, suffix);
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::clear() {
  if (!drawn_) return;
  fmt::print(stderr, "\r\033[2K");
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace patchwise::cli
