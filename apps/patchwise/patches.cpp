// patchwise patches: the picture of an image's patches (the seed's figure).

#include <fmt/format.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/data/image.h"
#include "patchwise/model/model_file.h"
#include "patchwise/report/patch_sheet.h"

namespace patchwise::cli {
namespace {

struct PatchesFlags {
  std::string image;
  std::string model;
  GridFlags grid;
  std::string out;
  int64_t cell = 128;
  bool json = false;
};

void run_patches(const PatchesFlags& f, const CLI::App* app) {
  check_output_writable(f.out, "--out");
  at::Tensor image;
  PatchGridOptions options;
  if (!f.model.empty()) {
    for (const char* flag : {"--grid", "--patch", "--stride", "--layout", "--input"}) {
      check_input(
          app->count(flag) == 0, "{}: not allowed with --model, which fixes the patches", flag);
    }
    PatchClassifier model = load_grid_model(f.model, "patches");
    const ModelConfig& config = model->config();
    options = config.grid;
    image = read_image(f.image, config.image_channels);
    if (image.size(1) != config.image_h || image.size(2) != config.image_w) {
      image = resize_image(image, config.image_h, config.image_w);
    }
  } else {
    options = grid_options(f.grid, app);
    image = read_image(f.image);
  }
  PatchGrid grid(options, image.size(1), image.size(2));
  PatchSheetOptions sheet_options;
  sheet_options.cell = f.cell;
  write_image(f.out, render_patch_sheet(image, grid, sheet_options));
  if (f.json) {
    nlohmann::json boxes = nlohmann::json::array();
    for (const PatchBox& b : grid.boxes()) {
      boxes.push_back({{"y", b.y}, {"x", b.x}, {"h", b.h}, {"w", b.w}, {"flip", b.flip}});
    }
    print_json({{"image", f.image}, {"out", f.out}, {"grid", grid.describe()}, {"patches", boxes}});
  } else {
    fmt::print(
        "patches: {} patches ({}) of {} -> {}\n", grid.count(), grid.describe(), f.image, f.out);
  }
}

}  // namespace

void setup_patches(CLI::App& app) {
  auto flags = std::make_shared<PatchesFlags>();
  CLI::App* cmd = app.add_subcommand("patches", "draw an image's patches as one PNG");
  cmd->add_option("image", flags->image, "image file (PNG, JPEG)")->required();
  cmd->add_option("--model,-m", flags->model, "take the patch layout from this model file");
  add_grid_flags(cmd, flags->grid);
  cmd->add_option("--out,-o", flags->out, "PNG file to write")->required();
  cmd->add_option("--cell", flags->cell, "side of each drawn patch in pixels")
      ->check(CLI::Range(8, 1024));
  cmd->add_flag("--json", flags->json, "print the patch boxes as JSON");
  cmd->callback([flags, cmd] { run_patches(*flags, cmd); });
}

}  // namespace patchwise::cli
