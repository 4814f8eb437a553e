// patchwise heatmap: each patch position's probability of a class, drawn over the image.

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "commands.h"
#include "common.h"
#include "patchwise/core/error.h"
#include "patchwise/core/files.h"
#include "patchwise/core/model_file.h"
#include "patchwise/core/runtime.h"
#include "patchwise/data/image.h"
#include "patchwise/report/heatmap.h"

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
  RuntimeFlags runtime;
};

void run_heatmap(const HeatmapFlags& f) {
  check_output_writable(f.out, "--out");
  const c10::Device device = resolve_device(f.runtime.device);
  set_threads(f.runtime.threads);
  PatchClassifier model = load_grid_model(f.model, "heatmap");
  model->to(device);
  const ModelConfig& config = model->config();
  at::Tensor image = read_image(f.image, config.image_channels);
  if (image.size(1) != config.image_h || image.size(2) != config.image_w) {
    fmt::print(stderr, "heatmap: {}: resizing {}x{} to the model's {}x{}\n", f.image,
               image.size(1), image.size(2), config.image_h, config.image_w);
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
    print_json({{"image", f.image},
                {"out", f.out},
                {"class", h.target_class},
                {"label", name},
                {"stride", f.grid_only ? 0 : f.stride},
                {"probabilities", matrix},
                {"boxes", boxes}});
  } else {
    fmt::print("heatmap: {} positions of {} ({}), p({}) from {:.3f} to {:.3f} -> {}\n",
               h.boxes.size(), f.image, f.grid_only ? "the model's patches" : fmt::format("stride {}", f.stride),
               name, h.probs.min().item<double>(), h.probs.max().item<double>(), f.out);
  }
}

}  // namespace

void setup_heatmap(CLI::App& app) {
  auto flags = std::make_shared<HeatmapFlags>();
  CLI::App* cmd = app.add_subcommand(
      "heatmap", "slide the model's patch over an image and draw each position's class probability");
  cmd->add_option("--model,-m", flags->model, "model file written by train")->required();
  cmd->add_option("image", flags->image, "image file (PNG, JPEG)")->required();
  cmd->add_option("--out,-o", flags->out, "PNG file to write")->required();
  cmd->add_option("--stride", flags->stride, "step between patch positions in pixels");
  cmd->add_option("--class", flags->target_class,
                  "class index to map; -1: the model's prediction for the image");
  cmd->add_flag("--grid-only", flags->grid_only, "only the model's own patches");
  cmd->add_option("--scale", flags->scale, "enlargement of the drawn image")->check(CLI::Range(1, 64));
  cmd->add_flag("--json", flags->json, "print the probability matrix as JSON");
  add_runtime_flags(cmd, flags->runtime);
  cmd->callback([flags] { run_heatmap(*flags); });
}

}  // namespace patchwise::cli
