// Where a training step's time goes, for the benchmark's layouts: normalize + cut
// and resize, the backbone's forward and loss, backward, and Adam's update; then
// LibTorch's profiler table of the operators over the same steps. With MODE infer, the
// same for patchwise_bench's inference job instead: batches of 256 images in eval mode
// under InferenceMode, the whole forward timed (it cuts and resizes too).
//
//   build/bench/step_breakdown [seed|whole|vgg|resnet|mil] [STEPS] [THREADS] [KERNELS] [MODE]
// THREADS 0: one per core; KERNELS: auto (the default) or aten, as train's --kernels;
// MODE: train (the default) or infer.
//
// mil: the MIL job of patchwise_bench (4 bags of 300-420 random 32x32 tiles, a tiled
// small-cnn with batch norm and gated attention, the fused loss); it has nothing to cut.
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "patchwise/base/cpu_allocator.h"
#include "patchwise/base/runtime.h"
#include "patchwise/data/idx.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/models/kernels.h"
#include "patchwise/train/loss.h"

using namespace patchwise;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

/// patchwise_bench's mil_config: the Megapixel recipe's tiled model.
ModelConfig mil_config(const at::Tensor& tiles) {
  ModelConfig c;
  c.tiled = true;
  c.grid.rows = c.grid.cols = 1;
  c.grid.patch_h = c.grid.patch_w = c.grid.input = c.image_h = c.image_w = tiles.size(2);
  c.image_channels = 1;
  c.class_names = std::vector<std::string>(10, "c");
  c.normalization = compute_normalization(tiles);
  c.fusion = FusionRule::kGatedAttention;
  c.backbone.num_classes = 10;
  c.backbone.batch_norm = true;
  c.backbone.dropout = 0.0;
  return c;
}

/// The model of `layout`: the seed's, the whole image, VGG16 on the seed's patches, or
/// the MIL job's tiled model.
ModelConfig layout_config(const std::string& layout, const Dataset& data, const at::Tensor& tiles) {
  if (layout == "mil") return mil_config(tiles);
  ModelConfig config;
  config.class_names = data.class_names;
  config.backbone.num_classes = 10;
  config.normalization = compute_normalization(data.images);
  if (layout == "whole") {
    config.grid.rows = config.grid.cols = 1;
    config.grid.patch_h = config.grid.patch_w = 28;
  }
  if (layout == "vgg") config.backbone.name = "vgg16";
  if (layout == "resnet") config.backbone.name = "resnet20";
  return config;
}

/// Milliseconds spent in each part of the timed steps.
struct StepTimes {
  double cut = 0, forward = 0, backward = 0, update = 0;
  double total() const { return cut + forward + backward + update; }
};

void print_breakdown(
    const std::string& layout, int64_t batch, int steps, const StepTimes& t, int64_t items,
    const char* unit) {
  const double total = t.total();
  std::printf(
      "%s, batch %lld, %d steps, ms per step: normalize+cut+resize %.2f (%.0f %%), "
      "forward+loss %.2f (%.0f %%), backward %.2f (%.0f %%), Adam %.2f (%.0f %%); "
      "%.0f %s/s\n",
      layout.c_str(),
      static_cast<long long>(batch),
      steps,
      t.cut / steps,
      100 * t.cut / total,
      t.forward / steps,
      100 * t.forward / total,
      t.backward / steps,
      100 * t.backward / total,
      t.update / steps,
      100 * t.update / total,
      items * steps / (total / 1000),
      unit);
}

/// LibTorch's profiler over `steps` untimed steps: inclusive time per operator, top 25.
template <typename Step>
void print_profile(Step&& step, int steps) {
  namespace prof = torch::autograd::profiler;
  namespace impl = torch::profiler::impl;
  const impl::ProfilerConfig profiler_config(impl::ProfilerState::KINETO);
  prof::prepareProfiler(profiler_config, {impl::ActivityType::CPU});
  prof::enableProfiler(profiler_config, {impl::ActivityType::CPU});
  for (int i = 0; i < steps; ++i) step(i, false);
  auto result = prof::disableProfiler();
  std::map<std::string, std::pair<int64_t, int64_t>> by_name;  // name -> (us, calls)
  for (const auto& e : result->events()) {
    auto& slot = by_name[e.name()];
    slot.first += static_cast<int64_t>(e.durationUs());
    slot.second += 1;
  }
  std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> rows(
      by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    return a.second.first > b.second.first;
  });
  std::printf("\noperators over %d steps (inclusive time, top 25):\n", steps);
  for (size_t i = 0; i < rows.size() && i < 25; ++i) {
    std::printf(
        "  %-50s %10.2f ms %6lld calls\n",
        rows[i].first.c_str(),
        rows[i].second.first / 1000.0,
        static_cast<long long>(rows[i].second.second));
  }
}

/// patchwise_bench's inference job: `steps` timed batches of 256 images (mil: the four
/// bags) in eval mode under InferenceMode, then the profile of up to 10 more.
void infer_breakdown(
    const std::string& layout, PatchClassifier& model, const Dataset& data, const at::Tensor& tiles,
    const std::vector<int64_t>& counts, int steps) {
  constexpr int64_t kBatch = 256;
  const bool mil = layout == "mil";
  model->eval();
  torch::InferenceMode guard;
  auto batch = [&](int i, bool) {
    if (mil) return model->forward_bags(tiles, counts);
    return model->forward(data.images.narrow(0, (i * kBatch) % (data.size() - kBatch), kBatch));
  };
  for (int i = 0; i < 3; ++i) batch(i, false);
  const auto start = Clock::now();
  for (int i = 0; i < steps; ++i) batch(i, true);
  const double ms = ms_since(start) / steps;
  std::printf(
      "%s, inference, batch %lld, %d batches: %.2f ms per batch; %.0f %s/s\n",
      layout.c_str(),
      static_cast<long long>(mil ? tiles.size(0) : kBatch),
      steps,
      ms,
      (mil ? tiles.size(0) : kBatch) / (ms / 1000),
      mil ? "tiles" : "images");
  print_profile(batch, std::min(steps, 10));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string layout = argc > 1 ? argv[1] : "seed";
  const int steps = argc > 2 ? std::atoi(argv[2]) : 40;
  const bool mil = layout == "mil";
  const std::string mode = argc > 5 ? argv[5] : "train";
  if ((layout != "seed" && layout != "whole" && layout != "vgg" && layout != "resnet" && !mil) ||
      steps < 1 || (mode != "train" && mode != "infer")) {
    std::fprintf(
        stderr,
        "usage: step_breakdown [seed|whole|vgg|resnet|mil] [STEPS >= 1] [THREADS] [auto|aten] "
        "[train|infer]\n");
    return 2;
  }
  set_threads(argc > 3 ? std::atoi(argv[3]) : 0);
  try {
    set_cpu_kernels(parse_cpu_kernels(argc > 4 ? argv[4] : "auto"));
    use_cpu_allocator_from_environment(kDefaultCpuCacheBytes);  // as the patchwise binary does
  } catch (const std::exception& e) {
    std::fprintf(stderr, "step_breakdown: %s\n", e.what());
    return 2;
  }
  constexpr int64_t kBatch = 64;
  Dataset data = load_idx_split("/usr/share/datasets/fashion-mnist", "train", 6400);
  const std::vector<int64_t> counts = {340, 372, 305, 411};
  at::Tensor tiles = torch::randint(0, 256, {1428, 1, 32, 32}, torch::kUInt8);
  torch::manual_seed(0);
  PatchClassifier model(layout_config(layout, data, tiles));
  if (mode == "infer") {
    infer_breakdown(layout, model, data, tiles, counts, steps);
    return 0;
  }
  model->train();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));

  StepTimes times;
  auto step = [&](int i, bool timed) {
    const int64_t at = (i * kBatch) % (data.size() - kBatch);
    at::Tensor images = data.images.narrow(0, at, kBatch);
    at::Tensor labels = data.labels.narrow(0, at, mil ? 4 : kBatch);
    auto start = Clock::now();
    if (!mil) model->grid().cut(model->normalize(images));
    const double t_cut = ms_since(start);
    start = Clock::now();
    PatchOutput out = mil ? model->forward_bags(tiles, counts) : model->forward(images);
    at::Tensor loss = compute_loss(mil ? LossKind::kFused : LossKind::kPatch, out, labels);
    const double t_forward = ms_since(start) - t_cut;  // forward() cuts again
    start = Clock::now();
    optimizer.zero_grad();
    loss.backward();
    const double t_backward = ms_since(start);
    start = Clock::now();
    optimizer.step();
    if (!timed) return;
    times.cut += t_cut;
    times.forward += t_forward;
    times.backward += t_backward;
    times.update += ms_since(start);
  };
  const int warmup = 3;
  for (int i = 0; i < warmup; ++i) step(i, false);
  for (int i = 0; i < steps; ++i) step(warmup + i, true);
  print_breakdown(
      layout, kBatch, steps, times, mil ? tiles.size(0) : kBatch, mil ? "tiles" : "images");
  print_profile(step, std::min(steps, 10));
  return 0;
}
