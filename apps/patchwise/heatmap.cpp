// patchwise heatmap: each patch position's probability of a class, drawn over the image.

#include "patchwise/report/heatmap.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/base/runtime.h"
#include "patchwise/data/image.h"
#include "patchwise/model/bag_options.h"
#include "patchwise/model/model_file.h"
#include "patchwise/patch/bags.h"

namespace patchwise::cli {
namespace {

struct HeatmapFlags {
  std::string model;
  std::string image;
  std::string out;
  int64_t stride = 2;
  int64_t target_class = -1;
  bool grid_only = false;
  int64_t scale = 8;
  bool json = false;
  int64_t top = 8;
  int64_t size = 1024;
  RuntimeFlags runtime;
};

/// The heatmap picture over a large image's thumbnail with the top tiles' crops below.
at::Tensor stack_vertically(const at::Tensor& top, const at::Tensor& bottom) {
  const int64_t width = std::max(top.size(2), bottom.size(2));
  auto pad = [&](const at::Tensor& t) {
    return torch::constant_pad_nd(t, {0, width - t.size(2)}, 255);
  };
  return torch::cat({pad(top), pad(bottom)}, 1).contiguous();
}

/// A tiled model: each kept tile's attention weight (or class probability) over the
/// image's thumbnail, a colour bar, and the top tiles as crops.
void run_tiled_heatmap(const HeatmapFlags& f, PatchClassifier& model) {
  const ModelConfig& config = model->config();
  const BagOptions options = model_bag_options(config);
  std::unique_ptr<RegionReader> reader = open_region_reader(f.image, options.reader);
  const Bag bag = read_bag(*reader, options);
  const BagPrediction p = predict_bag(model, bag.tiles, f.target_class);
  const at::Tensor thumb = reader->thumbnail(f.size);
  const Heatmap h = tile_heatmap(
      bag.boxes, p.scores, reader->width(), reader->height(), thumb.size(1), thumb.size(2));
  const std::string label = config.class_names[static_cast<size_t>(p.winner)];
  const std::string title = fmt::format(
      "{} / max over {} tiles; predicted {} ({:.3f})",
      p.score_name,
      bag.tiles.size(0),
      label,
      p.probabilities[static_cast<size_t>(p.winner)]);
  std::vector<at::Tensor> crops;
  std::vector<double> crop_scores;
  nlohmann::json tiles = nlohmann::json::array();
  const double downsample = reader->levels()[static_cast<size_t>(bag.level)].downsample;
  for (int64_t t : top_tiles(p.scores, f.top)) {
    const Box& b = bag.boxes[static_cast<size_t>(t)];
    const Box at_level{
        std::llround(b.x / downsample),
        std::llround(b.y / downsample),
        std::llround(b.w / downsample),
        std::llround(b.h / downsample)};
    crops.push_back(reader->read_resized(at_level, bag.level, 128));
    crop_scores.push_back(p.scores[static_cast<size_t>(t)]);
    tiles.push_back(
        {{"x", b.x}, {"y", b.y}, {"w", b.w}, {"h", b.h}, {"score", crop_scores.back()}});
  }
  write_image(
      f.out,
      stack_vertically(render_heatmap(thumb, h, title, 1), render_crop_strip(crops, crop_scores)));
  if (f.json) {
    return print_json(
        {{"image", f.image},
         {"out", f.out},
         {"class", p.winner},
         {"label", label},
         {"score", p.score_name},
         {"tiles", bag.tiles.size(0)},
         {"top_tiles", tiles}});
  }
  fmt::print(
      "heatmap: {} tiles of {}, {} from {:.4g} to {:.4g}, predicted {} -> {}\n",
      bag.tiles.size(0),
      f.image,
      p.score_name,
      *std::min_element(p.scores.begin(), p.scores.end()),
      *std::max_element(p.scores.begin(), p.scores.end()),
      label,
      f.out);
}

void run_heatmap(const HeatmapFlags& f) {
  check_output_writable(f.out, "--out");
  const c10::Device device = resolve_device(f.runtime.device);
  apply_runtime_flags(f.runtime);
  PatchClassifier model = load_model(f.model);
  model->to(device);
  model->set_precision(runtime_precision(f.runtime, device));
  model->eval();
  if (model->config().tiled) return run_tiled_heatmap(f, model);
  const ModelConfig& config = model->config();
  at::Tensor image = read_image(f.image, config.image_channels);
  if (image.size(1) != config.image_h || image.size(2) != config.image_w) {
    fmt::print(
        stderr,
        "heatmap: {}: resizing {}x{} to the model's {}x{}\n",
        f.image,
        image.size(1),
        image.size(2),
        config.image_h,
        config.image_w);
    image = resize_image(image, config.image_h, config.image_w);
  }
  HeatmapOptions options;
  options.stride = f.stride;
  options.target_class = f.target_class;
  options.grid_only = f.grid_only;
  Heatmap h = compute_heatmap(model, image, options);
  const std::string name = config.class_names[static_cast<size_t>(h.target_class)];
  write_image(f.out, render_heatmap(image, h, fmt::format("p({})", name), f.scale));
  if (f.json) {
    std::vector<std::vector<double>> matrix;
    at::Tensor p = h.probs.contiguous();
    for (int64_t r = 0; r < p.size(0); ++r) {
      matrix.emplace_back(p[r].data_ptr<double>(), p[r].data_ptr<double>() + p.size(1));
    }
    nlohmann::json boxes = nlohmann::json::array();
    for (const PatchBox& b : h.boxes) boxes.push_back({b.y, b.x, b.h, b.w});
    print_json(
        {{"image", f.image},
         {"out", f.out},
         {"class", h.target_class},
         {"label", name},
         {"stride", f.grid_only ? 0 : f.stride},
         {"probabilities", matrix},
         {"boxes", boxes}});
  } else {
    fmt::print(
        "heatmap: {} positions of {} ({}), p({}) from {:.3f} to {:.3f} -> {}\n",
        h.boxes.size(),
        f.image,
        f.grid_only ? "the model's patches" : fmt::format("stride {}", f.stride),
        name,
        h.probs.min().item<double>(),
        h.probs.max().item<double>(),
        f.out);
  }
}

}  // namespace

void setup_heatmap(CLI::App& app) {
  auto flags = std::make_shared<HeatmapFlags>();
  CLI::App* cmd = app.add_subcommand(
      "heatmap",
      "slide the model's patch over an image and draw each position's class probability");
  cmd->add_option("--model,-m", flags->model, "model file written by train")->required();
  cmd->add_option("image", flags->image, "image file (PNG, JPEG)")->required();
  cmd->add_option("--out,-o", flags->out, "PNG file to write")->required();
  cmd->add_option("--stride", flags->stride, "step between patch positions in pixels");
  cmd->add_option(
      "--class",
      flags->target_class,
      "class index to map; -1: the model's prediction for the image");
  cmd->add_flag("--grid-only", flags->grid_only, "only the model's own patches");
  cmd->add_option("--scale", flags->scale, "enlargement of the drawn image")
      ->check(CLI::Range(1, 64));
  cmd->add_flag("--json", flags->json, "print the probability matrix as JSON");
  cmd->add_option("--top", flags->top, "tiled models: crops of the best tiles drawn below")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--size", flags->size, "tiled models: longer side of the drawn thumbnail")
      ->check(CLI::Range(64, 16384))
      ->capture_default_str();
  add_runtime_flags(cmd, flags->runtime);
  cmd->callback([flags] { run_heatmap(*flags); });
}

}  // namespace patchwise::cli
