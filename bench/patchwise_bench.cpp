// The benchmark jobs, each named as in bench/peer.py (the PyTorch peer doing the
// same job) so that bench/run-bench can run both side by side:
//
//   seed_train / seed_infer     small-cnn, 2x2 patches of 18 resized to 32 (the seed)
//   whole_train / whole_infer   small-cnn on the whole 28x28 image resized to 32
//   vgg_train / vgg_infer       VGG16 on the seed's 4 patches of 32x32
//   predict_latency             one image through the seed model
//
// Training: batch 64, what `patchwise train` does per step (loader thread gathers
// the batch, normalize, cut and resize, forward, loss, backward, Adam). Inference:
// batch 256 under InferenceMode. Data: Fashion-MNIST when installed.
//
//   build/bench/patchwise_bench --benchmark_counters_tabular=true
//
// Counters: images_per_s, gflops (the backbone's multiply-adds x 2, x 3 for a
// training step's forward and backward), latency_ms (per call).

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <filesystem>

#include "patchwise/core/patch_classifier.h"
#include "patchwise/core/runtime.h"
#include "patchwise/data/idx.h"
#include "patchwise/data/loader.h"
#include "patchwise/models/backbone.h"
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

/// Threads: PATCHWISE_THREADS when set (bench/run-bench sets it for both sides), else
/// one per core.
void bench_threads() {
  const char* env = std::getenv("PATCHWISE_THREADS");
  set_threads(env ? std::atoi(env) : 0);
}

enum Layout : int64_t { kSeed = 0, kWhole = 1, kVgg = 2 };

ModelConfig bench_config(int64_t layout) {
  const Dataset& data = bench_data();
  ModelConfig c;
  c.class_names = data.class_names;
  c.backbone.num_classes = 10;
  c.normalization = compute_normalization(data.images);
  if (layout == kWhole) {
    c.grid.rows = c.grid.cols = 1;
    c.grid.patch_h = c.grid.patch_w = 28;
  }
  if (layout == kVgg) c.backbone.name = "vgg16";
  return c;
}

/// Floating-point operations per image: the backbone's multiply-adds over every patch,
/// two operations each; a training step costs about three forward passes.
double flops_per_image(const PatchClassifier& model, bool training) {
  const double forward =
      2.0 * double(backbone_forward_macs(model->config().backbone)) * double(model->num_patches());
  return training ? 3.0 * forward : forward;
}

void report(benchmark::State& state, const PatchClassifier& model, int64_t batch, bool training) {
  const double images = double(state.iterations() * batch);
  state.counters["images_per_s"] = benchmark::Counter(images, benchmark::Counter::kIsRate);
  state.counters["gflops"] = benchmark::Counter(
      images * flops_per_image(model, training) / 1e9, benchmark::Counter::kIsRate);
  state.counters["latency_ms"] = benchmark::Counter(
      double(state.iterations()) / 1e3, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void train_job(benchmark::State& state, int64_t layout) {
  bench_threads();
  torch::manual_seed(0);
  const ModelConfig config = bench_config(layout);
  PatchClassifier model(config);
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
  report(state, model, kTrainBatch, /*training=*/true);
}

void infer_job(benchmark::State& state, int64_t layout, int64_t batch) {
  bench_threads();
  torch::manual_seed(0);
  const ModelConfig config = bench_config(layout);
  PatchClassifier model(config);
  model->eval();
  torch::InferenceMode guard;
  const Dataset& data = bench_data();
  int64_t offset = 0;
  for (auto _ : state) {
    if (offset + batch > data.size()) offset = 0;
    PatchOutput out = model->forward(data.images.narrow(0, offset, batch));
    benchmark::DoNotOptimize(out.log_probs.data_ptr<float>());
    offset += batch;
  }
  report(state, model, batch, /*training=*/false);
}

void seed_train(benchmark::State& s) { train_job(s, kSeed); }
void seed_infer(benchmark::State& s) { infer_job(s, kSeed, kInferBatch); }
void whole_train(benchmark::State& s) { train_job(s, kWhole); }
void whole_infer(benchmark::State& s) { infer_job(s, kWhole, kInferBatch); }
void vgg_train(benchmark::State& s) { train_job(s, kVgg); }
void vgg_infer(benchmark::State& s) { infer_job(s, kVgg, kInferBatch); }
void predict_latency(benchmark::State& s) { infer_job(s, kSeed, 1); }

BENCHMARK(seed_train)->UseRealTime()->MinTime(5.0)->MinWarmUpTime(1.0);
BENCHMARK(seed_infer)->UseRealTime()->MinTime(3.0)->MinWarmUpTime(1.0);
BENCHMARK(whole_train)->UseRealTime()->MinTime(5.0)->MinWarmUpTime(1.0);
BENCHMARK(whole_infer)->UseRealTime()->MinTime(3.0)->MinWarmUpTime(1.0);
BENCHMARK(vgg_train)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(vgg_infer)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(predict_latency)->UseRealTime()->MinTime(3.0)->MinWarmUpTime(1.0);

}  // namespace
}  // namespace patchwise

BENCHMARK_MAIN();
