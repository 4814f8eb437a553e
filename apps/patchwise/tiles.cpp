// patchwise tiles: a large image's tiles and background filter, drawn and listed;
// with --read, every kept tile read and resized as training would, timed.

#include <fmt/format.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <numeric>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/base/runtime.h"
#include "patchwise/data/image.h"
#include "patchwise/patch/tile_stream.h"
#include "patchwise/report/tile_sheet.h"

namespace patchwise::cli {
namespace {

struct TilesFlags {
  std::string image;
  std::string out;
  TileFlags tiles;
  bool json = false;
  bool read = false;
  int64_t input = 32;
  int64_t batch = 64;
  int64_t workers = 2;
  int64_t depth = 4;
  int64_t threads = 0;
  int64_t sheet_size = 1024;
};

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // KiB on Linux
}

/// Reads and resizes every kept tile through TileStream; returns its figures.
nlohmann::json read_tiles(const RegionReader& reader, const TilePlan& plan, const TilesFlags& f) {
  std::vector<Box> boxes;
  for (int64_t i : plan.kept) boxes.push_back(plan.boxes[static_cast<size_t>(i)]);
  TileStreamOptions options{f.input, f.batch, f.workers, f.depth};
  ProgressBar bar("tiles");
  const auto start = std::chrono::steady_clock::now();
  TileStream stream(reader, plan.level, boxes, options);
  int64_t done = 0;
  double checksum = 0;  // uses every pixel, so nothing is optimized away
  for (TileBatch batch; stream.next(batch);) {
    done += batch.tiles.size(0);
    // On this thread, as the peer's numpy sum: a parallel sum would wake LibTorch's
    // OpenMP team, whose spinning between batches takes cores from the reading workers.
    const uint8_t* p = batch.tiles.data_ptr<uint8_t>();
    checksum += static_cast<double>(std::accumulate(p, p + batch.tiles.numel(), uint64_t{0}));
    bar.update(done, static_cast<int64_t>(boxes.size()));
  }
  bar.clear();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return {
      {"tiles", done},
      {"seconds", seconds},
      {"tiles_per_second", static_cast<double>(done) / std::max(seconds, 1e-9)},
      {"mean_pixel",
       done > 0 ? checksum / static_cast<double>(done * reader.channels() * f.input * f.input)
                : 0.0},
      {"output", f.input},
      {"workers", f.workers}};
}

void run_tiles(const TilesFlags& f) {
  if (!f.out.empty()) check_output_writable(f.out, "--out");
  set_threads(f.threads);
  std::unique_ptr<RegionReader> reader = open_region_reader(f.image, f.tiles.reader);
  const TilePlan plan = plan_tiles(*reader, f.tiles.tiles);
  nlohmann::json out = describe_region_image(*reader);
  out["plan"] = describe_tile_plan(plan, f.tiles.tiles.min_foreground, f.json);
  if (plan.fallback || plan.sparse) {
    fmt::print(
        stderr,
        "tiles: warning: {}: no tile has a foreground fraction of at least {}; keeping {}\n",
        f.image,
        f.tiles.tiles.min_foreground,
        plan.fallback ? fmt::format("all {} tiles (none has any foreground)", plan.boxes.size())
                      : fmt::format(
                            "the {} of {} tiles with any foreground (sparse content)",
                            plan.kept.size(),
                            plan.boxes.size()));
  }
  if (!f.out.empty()) {
    const at::Tensor thumb = reader->thumbnail(f.sheet_size);
    write_image(f.out, render_tile_sheet(thumb, plan, reader->width(), reader->height()));
    out["sheet"] = f.out;
  }
  if (f.read) out["read"] = read_tiles(*reader, plan, f);
  out["peak_rss_mib"] = peak_rss_mib();
  if (f.json) return print_json(out);
  fmt::print(
      "tiles: {}: {}, {}x{}, {} channel{}, {} level{}{}\n",
      f.image,
      reader->format(),
      reader->width(),
      reader->height(),
      reader->channels(),
      reader->channels() == 1 ? "" : "s",
      reader->levels().size(),
      reader->levels().size() == 1 ? "" : "s",
      std::isnan(reader->mpp()) ? "" : fmt::format(", {:.4g} microns per pixel", reader->mpp()));
  fmt::print(
      "tiles: level {} (downsample {:.4g}), tiles of {} at stride {}: {} tiles, {} kept",
      plan.level,
      plan.downsample,
      plan.tile,
      plan.stride,
      plan.boxes.size(),
      plan.kept.size());
  if (plan.mask.mask.defined()) {
    fmt::print(
        " (foreground >= {} by Otsu on {}, threshold {})",
        f.tiles.tiles.min_foreground,
        plan.mask.channel,
        plan.mask.threshold);
  }
  fmt::print("\n");
  if (!f.out.empty()) fmt::print("tiles: sheet {}\n", f.out);
  if (f.read) {
    const auto& r = out["read"];
    fmt::print(
        "tiles: read {} tiles resized to {}x{} in {:.2f} s: {:.0f} tiles/s ({} workers)\n",
        r["tiles"].get<int64_t>(),
        f.input,
        f.input,
        r["seconds"].get<double>(),
        r["tiles_per_second"].get<double>(),
        f.workers);
  }
  fmt::print("tiles: peak RSS {:.0f} MiB\n", out["peak_rss_mib"].get<double>());
}

}  // namespace

void setup_tiles(CLI::App& app) {
  auto flags = std::make_shared<TilesFlags>();
  CLI::App* cmd = app.add_subcommand(
      "tiles", "a large image's tiles and background filter: a picture, a list, a read test");
  cmd->add_option(
         "image",
         flags->image,
         "image file: whole-slide formats (OpenSlide), TIFF, PNG, JPEG, ... (libvips)")
      ->required();
  cmd->add_option("--out,-o", flags->out, "PNG to draw: thumbnail, mask, kept and rejected tiles");
  add_tile_flags(cmd, flags->tiles);
  cmd->add_option("--sheet-size", flags->sheet_size, "longer side of the drawn thumbnail")
      ->check(CLI::Range(64, 16384))
      ->capture_default_str();
  cmd->add_flag("--json", flags->json, "print the image, the plan and every tile box as JSON");
  cmd->add_flag(
      "--read",
      flags->read,
      "read and resize every kept tile as training would, and report tiles/s");
  cmd->add_option("--input", flags->input, "side the tiles are resized to (with --read)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--batch", flags->batch, "tiles per batch (with --read)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--workers", flags->workers, "reading threads (with --read)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--depth", flags->depth, "batches read ahead at most (with --read)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option(
         "--threads", flags->threads, "LibTorch threads; 0: OMP_NUM_THREADS, else one per core")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([flags] { run_tiles(*flags); });
}

}  // namespace patchwise::cli
