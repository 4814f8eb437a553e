// Throughput of training steps and inference, in images per second, for the seed
// configuration (small-cnn, 2x2 patches of 18 resized to 32) and the whole-image
// model, on Fashion-MNIST when installed (random images of its shape otherwise).
//
//   build/bench/patchwise_bench --benchmark_counters_tabular=true
//
// A training step is what `patchwise train` does per batch: gather the batch
// (loader thread), normalize, cut and resize, forward, loss, backward, Adam.

#include <filesystem>

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "patchwise/core/patch_classifier.h"
#include "patchwise/core/runtime.h"
#include "patchwise/data/idx.h"
#include "patchwise/data/loader.h"
#include "patchwise/train/loss.h"

namespace patchwise {
namespace {

constexpr int64_t kTrainBatch = 64;      // the seed's batch
constexpr int64_t kInferBatch = 256;     // eval's default batch
constexpr int64_t kBenchImages = 12800;  // enough for every pass to see fresh batches

const Dataset& bench_data() {
  static const Dataset data = [] {
    const std::string dir = "/usr/share/datasets/fashion-mnist";
    if (std::filesystem::exists(dir)) return load_idx_split(dir, "train", kBenchImages);
    Dataset d;
    torch::manual_seed(0);
    d.images = torch::randint(0, 256, {kBenchImages, 1, 28, 28}, torch::kUInt8);
    d.labels = torch::randint(0, 10, {kBenchImages}, torch::kInt64);
    d.class_names = std::vector<std::string>(10, "c");
    return d;
  }();
  return data;
}

/// state.range(0): 0 = seed configuration (2x2 of 18 -> 32), 1 = whole image (1x1 of 28 -> 32).
ModelConfig bench_config(int64_t layout) {
  const Dataset& data = bench_data();
  ModelConfig c;
  c.class_names = data.class_names;
  c.backbone.num_classes = 10;
  c.normalization = compute_normalization(data.images);
  if (layout == 1) {
    c.grid.rows = c.grid.cols = 1;
    c.grid.patch_h = c.grid.patch_w = 28;
  }
  return c;
}

void BM_TrainStep(benchmark::State& state) {
  set_threads(0);
  torch::manual_seed(0);
  PatchClassifier model(bench_config(state.range(0)));
  model->train();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  Loader loader(bench_data(), kTrainBatch, /*shuffle=*/true, /*seed=*/1);
  int64_t epoch = 0;
  loader.start_epoch(epoch);
  for (auto _ : state) {
    Batch batch;
    if (!loader.next(batch)) {
      loader.start_epoch(++epoch);
      loader.next(batch);
    }
    PatchOutput out = model->forward(batch.images);
    at::Tensor loss = compute_loss(LossKind::kPatch, out, batch.labels);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  }
  state.SetItemsProcessed(state.iterations() * kTrainBatch);
  state.counters["images_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * kTrainBatch),
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_TrainStep)->ArgName("whole_image")->Arg(0)->Arg(1)->UseRealTime()->MinTime(5.0);

void BM_Inference(benchmark::State& state) {
  set_threads(0);
  torch::manual_seed(0);
  PatchClassifier model(bench_config(state.range(0)));
  model->eval();
  torch::InferenceMode guard;
  const Dataset& data = bench_data();
  int64_t offset = 0;
  for (auto _ : state) {
    if (offset + kInferBatch > data.size()) offset = 0;
    PatchOutput out = model->forward(data.images.narrow(0, offset, kInferBatch));
    benchmark::DoNotOptimize(out.log_probs.data_ptr<float>());
    offset += kInferBatch;
  }
  state.counters["images_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * kInferBatch),
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Inference)->ArgName("whole_image")->Arg(0)->Arg(1)->UseRealTime()->MinTime(3.0);

}  // namespace
}  // namespace patchwise

BENCHMARK_MAIN();
