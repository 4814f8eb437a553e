// The benchmark jobs, each named as in bench/peer.py (the PyTorch peer doing the
// same job) so that bench/run-bench can run both side by side:
//
//   seed_train / seed_infer     small-cnn, 2x2 patches of 18 resized to 32 (the seed)
//   whole_train / whole_infer   small-cnn on the whole 28x28 image resized to 32
//   vgg_train / vgg_infer       VGG16 on the seed's 4 patches of 32x32
//   resnet_train / resnet_infer ResNet-20 (batch norm) on the seed's 4 patches of 32x32
//   resnet_train_bf16 / ..._infer_bf16  the same with --precision bf16 (autocast)
//   resnet56_, resnet18_, bagnet11_ train / infer  the other residual backbones, the same way
//   predict_latency             one image through the seed model
//   mil_train / mil_infer       gated-attention MIL: a tiled small-cnn (batch norm, no
//                               dropout) on 4 bags of 32x32 tiles per call
//
// Training: batch 64, what `patchwise train` does per step (loader thread gathers
// the batch, normalize, cut and resize, forward, loss, backward, Adam). Inference:
// batch 256 under InferenceMode. Data: Fashion-MNIST when installed.
//
// MIL: what `patchwise train --tile 50 --tile-stride 25 --input 32 --fusion gated-attention
// --batch-norm --dropout 0 --loss fused --batch 4` does per step once its bags are cached
// (forward_bags over one batch of uint8 tiles, the fused loss, backward,
// Adam); inference is forward_bags in eval mode under InferenceMode. The same 4 bags of
// random tiles every call; bag sizes uniform in [300, 420] (about what Megapixel MNIST
// keeps with tiles of 50 at stride 25), or PATCHWISE_BAG_SIZES="n1,n2,..." cycled over the
// bags, drawn as bench/peer.py draws them. Each job prints its bags, parameter count
// and loss at step 0 on stderr, once.
//
//   build/bench/patchwise_bench --benchmark_counters_tabular=true
//
// Counters: images_per_s (bags for MIL), tiles_per_s (MIL only), gflops (the backbone's
// multiply-adds x 2, x 3 for a training step's forward and backward), latency_ms (per call).

#include <benchmark/benchmark.h>
#include <fmt/core.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "patchwise/base/cpu_allocator.h"
#include "patchwise/base/error.h"
#include "patchwise/base/precision.h"
#include "patchwise/base/runtime.h"
#include "patchwise/data/idx.h"
#include "patchwise/data/loader.h"
#include "patchwise/model/patch_classifier.h"
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
  try {
    use_cpu_allocator_from_environment(kDefaultCpuCacheBytes);
  } catch (const InputError& e) {  // one line and exit 2, as the binary does
    std::fprintf(stderr, "patchwise_bench: %s\n", e.what());
    std::exit(2);
  }
}

/// What a job runs: a backbone on the seed's 2x2 grid of 18x18 patches, or on the whole image.
struct Layout {
  const char* backbone;
  bool whole = false;
};
constexpr Layout kSeed{"small-cnn"}, kWhole{"small-cnn", true}, kVgg{"vgg16"}, kResNet{"resnet20"};

ModelConfig bench_config(const Layout& layout) {
  const Dataset& data = bench_data();
  ModelConfig c;
  c.class_names = data.class_names;
  c.backbone.num_classes = 10;
  c.normalization = compute_normalization(data.images);
  if (layout.whole) {
    c.grid.rows = c.grid.cols = 1;
    c.grid.patch_h = c.grid.patch_w = 28;
  }
  c.backbone.name = layout.backbone;
  return c;
}

/// Floating-point operations per patch: the backbone's multiply-adds, two operations
/// each; a training step costs about three forward passes.
double flops_per_patch(const PatchClassifier& model, bool training) {
  const double forward = 2.0 * double(backbone_forward_macs(model->config().backbone));
  return training ? 3.0 * forward : forward;
}

/// Counters of calls on `batch` images each; `tiles` > 0: the images are bags of that
/// many tiles in all per call (adds tiles_per_s), else each has the model's patches.
void report(
    benchmark::State& state, const PatchClassifier& model, int64_t batch, bool training,
    int64_t tiles = 0) {
  const double calls = double(state.iterations());
  const double patches = double(tiles > 0 ? tiles : batch * model->num_patches());
  state.counters["images_per_s"] = benchmark::Counter(calls * batch, benchmark::Counter::kIsRate);
  if (tiles > 0) {
    state.counters["tiles_per_s"] = benchmark::Counter(calls * tiles, benchmark::Counter::kIsRate);
  }
  state.counters["gflops"] = benchmark::Counter(
      calls * patches * flops_per_patch(model, training) / 1e9, benchmark::Counter::kIsRate);
  state.counters["latency_ms"] = benchmark::Counter(
      double(state.iterations()) / 1e3, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void train_job(
    benchmark::State& state, const Layout& layout, Precision precision = Precision::kFloat32) {
  bench_threads();
  torch::manual_seed(0);
  const ModelConfig config = bench_config(layout);
  PatchClassifier model(config);
  model->set_precision(precision);
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

void infer_job(
    benchmark::State& state, const Layout& layout, int64_t batch,
    Precision precision = Precision::kFloat32) {
  bench_threads();
  torch::manual_seed(0);
  const ModelConfig config = bench_config(layout);
  PatchClassifier model(config);
  model->set_precision(precision);
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

constexpr int64_t kMilBags = 4;        // bags per call: the recipe's batch
constexpr int64_t kMilInput = 32;      // tile side at the backbone's input
constexpr int64_t kMilMinTiles = 300;  // default bag sizes: uniform in [300, 420]
constexpr int64_t kMilMaxTiles = 420;

struct MilBatch {
  std::vector<int64_t> counts;  ///< tiles per bag
  at::Tensor tiles;             ///< uint8 [N,1,32,32], the bags one after the other
  at::Tensor labels;            ///< int64 [16]
};

/// splitmix64, the default bag sizes' generator (bench/peer.py has the same).
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// PATCHWISE_BAG_SIZES="n1,n2,..." (each >= 1); empty when unset.
std::vector<int64_t> env_bag_sizes() {
  const char* env = std::getenv("PATCHWISE_BAG_SIZES");
  std::vector<int64_t> sizes;
  for (std::string rest = env ? env : ""; !rest.empty();) {
    const size_t comma = rest.find(',');
    const std::string item = rest.substr(0, comma);
    char* end = nullptr;
    const long long n = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || n < 1) {
      throw std::invalid_argument(
          "PATCHWISE_BAG_SIZES: '" + std::string(env) +
          "', expected positive integers separated by commas");
    }
    sizes.push_back(n);
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
  }
  return sizes;
}

/// The bags' sizes: PATCHWISE_BAG_SIZES cycled, else splitmix64 from seed 1, each
/// kMilMinTiles + draw % (kMilMaxTiles - kMilMinTiles + 1).
std::vector<int64_t> mil_bag_sizes() {
  const std::vector<int64_t> given = env_bag_sizes();
  std::vector<int64_t> sizes;
  uint64_t state = 1;
  for (size_t i = 0; i < size_t(kMilBags); ++i) {
    const uint64_t draw = splitmix64(state) % uint64_t(kMilMaxTiles - kMilMinTiles + 1);
    sizes.push_back(given.empty() ? kMilMinTiles + int64_t(draw) : given[i % given.size()]);
  }
  return sizes;
}

const MilBatch& mil_batch() {
  static const MilBatch batch = [] {
    MilBatch b;
    b.counts = mil_bag_sizes();
    const int64_t n = std::accumulate(b.counts.begin(), b.counts.end(), int64_t{0});
    torch::manual_seed(1);
    b.tiles = torch::randint(0, 256, {n, 1, kMilInput, kMilInput}, torch::kUInt8);
    b.labels = torch::randint(0, 10, {kMilBags}, torch::kInt64);
    return b;
  }();
  return batch;
}

/// A tiled model as `patchwise train --tile T --input 32 --fusion gated-attention
/// --batch-norm --dropout 0` builds it (setup_tiled, run_train).
ModelConfig mil_config() {
  ModelConfig c;
  c.tiled = true;
  c.grid = PatchGridOptions{};
  c.grid.rows = c.grid.cols = 1;
  c.grid.patch_h = c.grid.patch_w = c.grid.input = kMilInput;
  c.image_h = c.image_w = kMilInput;
  c.image_channels = 1;
  c.class_names = std::vector<std::string>(10, "c");
  c.normalization = compute_normalization(mil_batch().tiles);
  c.fusion = FusionRule::kGatedAttention;
  c.attention_hidden = 128;
  c.backbone.num_classes = 10;
  c.backbone.batch_norm = true;
  c.backbone.dropout = 0.0;
  return c;
}

/// Once per process, on stderr: the bags, the parameter count and the loss ("fused") of
/// the untrained model in its current mode, without gradients, to set beside bench/peer.py's.
void describe_mil(const char* job, PatchClassifier& model, const MilBatch& batch) {
  static bool done = false;
  if (done) return;
  done = true;
  torch::NoGradGuard no_grad;
  int64_t parameters = 0;
  for (const at::Tensor& p : model->parameters()) parameters += p.numel();
  const PatchOutput out = model->forward_bags(batch.tiles, batch.counts);
  const double loss = compute_loss(LossKind::kFused, out, batch.labels).item<double>();
  fmt::print(
      stderr,
      "{}: {} bags, {} tiles, {} parameters, loss at step 0 {:.4f}\n",
      job,
      batch.counts.size(),
      batch.tiles.size(0),
      parameters,
      loss);
}

void mil_train(benchmark::State& state) {
  bench_threads();
  const MilBatch& batch = mil_batch();
  torch::manual_seed(0);
  PatchClassifier model(mil_config());
  model->train();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  describe_mil("mil_train", model, batch);
  for (auto _ : state) {
    PatchOutput out = model->forward_bags(batch.tiles, batch.counts);
    at::Tensor loss = compute_loss(LossKind::kFused, out, batch.labels);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  }
  report(state, model, kMilBags, /*training=*/true, batch.tiles.size(0));
}

void mil_infer(benchmark::State& state) {
  bench_threads();
  const MilBatch& batch = mil_batch();
  torch::manual_seed(0);
  PatchClassifier model(mil_config());
  model->eval();
  describe_mil("mil_infer", model, batch);
  torch::InferenceMode guard;
  for (auto _ : state) {
    PatchOutput out = model->forward_bags(batch.tiles, batch.counts);
    benchmark::DoNotOptimize(out.log_probs.data_ptr<float>());
  }
  report(state, model, kMilBags, /*training=*/false, batch.tiles.size(0));
}

void seed_train(benchmark::State& s) { train_job(s, kSeed); }
void seed_infer(benchmark::State& s) { infer_job(s, kSeed, kInferBatch); }
void whole_train(benchmark::State& s) { train_job(s, kWhole); }
void whole_infer(benchmark::State& s) { infer_job(s, kWhole, kInferBatch); }
void vgg_train(benchmark::State& s) { train_job(s, kVgg); }
void vgg_infer(benchmark::State& s) { infer_job(s, kVgg, kInferBatch); }
void resnet_train(benchmark::State& s) { train_job(s, kResNet); }
void resnet_infer(benchmark::State& s) { infer_job(s, kResNet, kInferBatch); }
void resnet_train_bf16(benchmark::State& s) { train_job(s, kResNet, Precision::kBFloat16); }
void resnet_infer_bf16(benchmark::State& s) {
  infer_job(s, kResNet, kInferBatch, Precision::kBFloat16);
}
void predict_latency(benchmark::State& s) { infer_job(s, kSeed, 1); }
void resnet56_train(benchmark::State& s) { train_job(s, {"resnet56"}); }
void resnet56_infer(benchmark::State& s) { infer_job(s, {"resnet56"}, kInferBatch); }
void resnet18_train(benchmark::State& s) { train_job(s, {"resnet18"}); }
void resnet18_infer(benchmark::State& s) { infer_job(s, {"resnet18"}, kInferBatch); }
void bagnet11_train(benchmark::State& s) { train_job(s, {"bagnet11"}); }
void bagnet11_infer(benchmark::State& s) { infer_job(s, {"bagnet11"}, kInferBatch); }

BENCHMARK(seed_train)->UseRealTime()->MinTime(5.0)->MinWarmUpTime(1.0);
BENCHMARK(seed_infer)->UseRealTime()->MinTime(3.0)->MinWarmUpTime(1.0);
BENCHMARK(whole_train)->UseRealTime()->MinTime(5.0)->MinWarmUpTime(1.0);
BENCHMARK(whole_infer)->UseRealTime()->MinTime(3.0)->MinWarmUpTime(1.0);
BENCHMARK(vgg_train)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(vgg_infer)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(resnet_train)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(resnet_infer)->UseRealTime()->MinTime(5.0)->MinWarmUpTime(2.0);
BENCHMARK(resnet_train_bf16)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(resnet_infer_bf16)->UseRealTime()->MinTime(5.0)->MinWarmUpTime(2.0);
BENCHMARK(predict_latency)->UseRealTime()->MinTime(3.0)->MinWarmUpTime(1.0);
BENCHMARK(mil_train)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(mil_infer)->UseRealTime()->MinTime(5.0)->MinWarmUpTime(2.0);
BENCHMARK(resnet56_train)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(resnet56_infer)->UseRealTime()->MinTime(5.0)->MinWarmUpTime(2.0);
BENCHMARK(resnet18_train)->UseRealTime()->MinTime(15.0)->MinWarmUpTime(5.0);
BENCHMARK(resnet18_infer)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(bagnet11_train)->UseRealTime()->MinTime(10.0)->MinWarmUpTime(3.0);
BENCHMARK(bagnet11_infer)->UseRealTime()->MinTime(5.0)->MinWarmUpTime(2.0);

}  // namespace
}  // namespace patchwise

BENCHMARK_MAIN();
