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

/// A tiled model: each kept tile's attention weight (or class probability) over the
/// image's thumbnail, a colour bar, and the top tiles as crops.
void run_tiled_heatmap(const HeatmapFlags& f, PatchClassifier& model) {
  TiledHeatmap h = draw_tiled_heatmap(model, f.image, f.target_class, f.size, f.top);
  write_image(f.out, h.picture);
  if (f.json) {
    nlohmann::json out = {{"image", f.image}, {"out", f.out}};
    out.update(h.summary);
    return print_json(out);
  }
  fmt::print(
      "heatmap: {} tiles of {}, {} from {:.4g} to {:.4g}, predicted {} -> {}\n",
      h.summary["tiles"].get<int64_t>(),
      f.image,
      h.summary["score"].get<std::string>(),
      h.low,
      h.high,
      h.summary["label"].get<std::string>(),
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
