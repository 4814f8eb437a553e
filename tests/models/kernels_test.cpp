#include "patchwise/models/kernels.h"

#include <gmock/gmock.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "patchwise/base/error.h"
#include "patchwise/models/backbone.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

/// Restores the process-wide choice when a test ends.
class KernelsTest : public test::SeededTest {
 protected:
  void TearDown() override { set_cpu_kernels(CpuKernels::kAuto); }
};

BackboneOptions options(const std::string& name, int64_t channels = 1) {
  BackboneOptions o;
  o.name = name;
  o.in_channels = channels;
  o.input = 16;
  o.num_classes = 7;
  return o;
}

/// One training pass of `net` (a copy of `from`, in `dtype`) under `kernels`: logits,
/// then the input's and every parameter's gradient and every buffer after the pass, by
/// name.
std::map<std::string, at::Tensor> training_pass(
    const std::shared_ptr<BackboneImpl>& from, const std::string& name, CpuKernels kernels,
    torch::Dtype dtype, const at::Tensor& x, const at::Tensor& upstream) {
  auto net = make_backbone(options(name, x.size(1)));
  {
    torch::NoGradGuard no_grad;
    auto source = from->named_parameters();
    for (auto& p : net->named_parameters()) p.value().copy_(source[p.key()]);
    auto buffers = from->named_buffers();
    for (auto& b : net->named_buffers()) b.value().copy_(buffers[b.key()]);
  }
  net->to(dtype);
  net->train();
  set_cpu_kernels(kernels);
  const at::Tensor input = x.to(dtype).clone().requires_grad_(true);  // a leaf of its own
  at::Tensor logits = net->forward(input);
  logits.backward(upstream.to(dtype));
  std::map<std::string, at::Tensor> out{
      {"logits", logits.detach().to(torch::kDouble)},
      {"grad input", input.grad().to(torch::kDouble)}};
  for (auto& p : net->named_parameters()) {
    out["grad " + p.key()] = p.value().grad().to(torch::kDouble);
  }
  for (auto& b : net->named_buffers()) out[b.key()] = b.value().to(torch::kDouble);
  return out;
}

/// Whether oneDNN is held to AVX2 (kernels_test_avx2).
bool held_to_avx2() {
  const char* isa = std::getenv("ONEDNN_MAX_CPU_ISA");
  return isa != nullptr && std::string(isa) == "AVX2";
}

/// max |a - b| over max |b|.
double relative_gap(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / std::max(scale, 1e-30);
}

/// Each float32 layer sums at most 9 x 64 = 576 products (u = 2^-24 each, so |error| <= 576 u of
/// the sum of magnitudes, 3.4e-5), and Winograd F(4x4, 3x3) adds its transforms' rounding, whose
/// coefficients reach 8 in magnitude in the output transform: 8 x 576 u = 2.7e-4 per layer.
/// Over the 20 layers of ResNet-20 the errors add: 20 x 2.7e-4 = 5.5e-3 relative to the largest
/// value. That holds where the largest value is of the order of the sums of magnitudes, as in
/// a forward pass whose batch norms keep each layer's outputs of order 1.
const double kResnetForwardBound = 20 * 8 * 576 * std::ldexp(1.0, -24);

/// The blocked path's float32 result `blocked` held to the float64 pass `exact`. How far a
/// correct float32 pass may stray depends on the tensor's condition and on the order in
/// which the kernels oneDNN, ATen and OpenBLAS pick on a processor add its terms: gradients
/// through batch norm subtract nearly equal numbers (a convolution's weight gradient before
/// a batch norm is orthogonal to its weights), and a long running sum (oneDNN's 1x1 weight
/// gradients add the batch's N x H x W products per weight) errs far more than a blocked one.
/// No constant bounds that, so the bound is the largest of three measures, none an
/// assertion about LibTorch's accuracy:
/// - `floor`, the a priori bound of a well-conditioned tensor (kResnetForwardBound);
/// - 8 x how far LibTorch's float32 pass `aten` strays: the same sums in another order, up
///   to Winograd's factor 8 (its output transform's coefficients);
/// - 8 x how far the blocked pass moves when the same batch is given in another order
///   (`reordered`): that changes the order of every sum over the batch and nothing else, so
///   it draws the blocked path's own rounding again; a rounding error is of that size,
///   a wrong result (a bad reorder, a missing term) is not, and it stays the same.
/// Sizes are relative to the tensor's largest float64 value.
void expect_as_accurate_as_its_rounding(
    const at::Tensor& blocked, const at::Tensor& reordered, const at::Tensor& aten,
    const at::Tensor& exact, double floor, const std::string& what) {
  constexpr double kFactor = 8;
  const double libtorch = relative_gap(aten, exact);
  const double noise = (blocked - reordered).abs().max().item<double>() /
                       std::max(exact.abs().max().item<double>(), 1e-30);
  EXPECT_LE(relative_gap(blocked, exact), std::max({floor, kFactor * libtorch, kFactor * noise}))
      << what << " (LibTorch's float32 pass strays " << libtorch << ", the blocked pass moves "
      << noise << " with the batch reordered)";
}

/// The blocked path's float32 evaluation `blocked` held to the float64 pass `exact` as
/// accurately as LibTorch's float32 pass `aten` is, up to Winograd's factor 8, or within
/// `floor` (expect_as_accurate_as_its_rounding without the reordered pass: evaluation sums
/// nothing over the batch).
void expect_as_accurate_as_libtorch(
    const at::Tensor& blocked, const at::Tensor& aten, const at::Tensor& exact, double floor,
    const std::string& what) {
  expect_as_accurate_as_its_rounding(blocked, blocked, aten, exact, floor, what);
}

/// `pass` with the batch's samples in the order `order`, its outputs with a batch
/// dimension (logits, the input's gradient) put back in the original order.
std::map<std::string, at::Tensor> in_original_order(
    std::map<std::string, at::Tensor> pass, const at::Tensor& order) {
  const at::Tensor back = torch::argsort(order);
  for (const char* key : {"logits", "grad input"}) pass[key] = pass[key].index_select(0, back);
  return pass;
}

// The blocked path (oneDNN's nChw16c with Winograd for 32 channels and more, or nChw8c
// where oneDNN is held to AVX2 (kernels_test_avx2), its batch norm with the ReLU fused) and
// LibTorch's compute the same function in float32; the blocked one is held to LibTorch's in
// float64 within its rounding (expect_as_accurate_as_its_rounding), with the forward bound as
// the floor, twice that for gradients (they traverse the layers twice).
TEST_F(KernelsTest, BlockedTrainingMatchesLibTorchWithinFloat32Rounding) {
  if (!blocked_kernels_available()) GTEST_SKIP() << "no blocked kernels in this oneDNN";
  const std::vector<std::pair<std::string, int64_t>> nets{
      {"resnet20", 1}, {"bagnet11", 1}, {"resnet20", 3}};
  for (const auto& [name, channels] : nets) {
    auto from = make_backbone(options(name, channels));
    const at::Tensor x = torch::randn({16, channels, 16, 16});
    const at::Tensor upstream = torch::randn({16, 7});
    const at::Tensor order = torch::randperm(16);
    const auto exact = training_pass(from, name, CpuKernels::kAten, torch::kDouble, x, upstream);
    const auto aten = training_pass(from, name, CpuKernels::kAten, torch::kFloat, x, upstream);
    const auto blocked = training_pass(from, name, CpuKernels::kAuto, torch::kFloat, x, upstream);
    const auto reordered = in_original_order(
        training_pass(
            from,
            name,
            CpuKernels::kAuto,
            torch::kFloat,
            x.index_select(0, order),
            upstream.index_select(0, order)),
        order);
    ASSERT_EQ(exact.size(), blocked.size());
    for (const auto& [key, value] : exact) {
      const bool gradient = key.rfind("grad ", 0) == 0;
      expect_as_accurate_as_its_rounding(
          blocked.at(key),
          reordered.at(key),
          aten.at(key),
          value,
          gradient ? 2 * kResnetForwardBound : kResnetForwardBound,
          name + "/" + std::to_string(channels) + " " + key);
    }
    // The running statistics moved: the batch's, not the initial ones, were folded in.
    EXPECT_GT(relative_gap(blocked.at("bn1.running_mean"), torch::zeros({1})), 0.0) << name;
    EXPECT_EQ(blocked.at("bn1.num_batches_tracked").item<double>(), 1.0) << name;
  }
}

// kernels_test_avx2 runs this binary with oneDNN held to AVX2: the blocked path must
// then run without Winograd (nChw8c), not fall back to LibTorch's kernels.
TEST_F(KernelsTest, HeldToAvx2TheBlockedPathRunsWithoutWinograd) {
  if (!held_to_avx2()) GTEST_SKIP() << "oneDNN not held to AVX2";
  EXPECT_TRUE(blocked_kernels_available());
  EXPECT_FALSE(winograd_available());
}

/// Each batch norm's running means ~ N(0, 0.5) and variances in [0.5, 2], its scales in
/// [0.5, 1.5] and shifts ~ N(0, 0.5), so that folding every one of them matters.
void randomize_batch_norms(BackboneImpl& net) {
  torch::NoGradGuard no_grad;
  for (const auto& m : net.modules()) {
    auto* bn = dynamic_cast<torch::nn::BatchNorm2dImpl*>(m.get());
    if (!bn) continue;
    bn->running_mean.normal_(0, 0.5);
    bn->running_var.uniform_(0.5, 2);
    bn->weight.uniform_(0.5, 1.5);
    bn->bias.normal_(0, 0.5);
  }
}

/// `net` in `dtype` on `x` under `kernels`, without gradients, as float64.
at::Tensor evaluate(
    BackboneImpl& net, CpuKernels kernels, torch::Dtype dtype, const at::Tensor& x) {
  set_cpu_kernels(kernels);
  net.to(dtype);
  torch::NoGradGuard no_grad;
  at::Tensor out = net.forward(x.to(dtype)).to(torch::kDouble);
  net.to(torch::kFloat);
  return out;
}

// Evaluation without gradients takes the blocked path too (Winograd where it applies),
// with the layers' running statistics: held to LibTorch's float64 pass as accurately as
// LibTorch's own float32 pass is, and so is a pass in inference mode.
TEST_F(KernelsTest, EvaluationAgreesWithFloat64UnderEitherChoice) {
  for (const std::string name : {"resnet20", "bagnet11"}) {
    auto net = make_backbone(options(name));
    {
      torch::NoGradGuard no_grad;
      for (auto& b : net->named_buffers()) {
        if (b.key().find("running_mean") != std::string::npos) b.value().normal_(0, 0.5);
        if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 2);
      }
    }
    net->eval();
    const at::Tensor x = torch::randn({8, 1, 16, 16});
    auto run = [&](CpuKernels kernels, torch::Dtype dtype) {
      set_cpu_kernels(kernels);
      net->to(dtype);
      torch::NoGradGuard no_grad;
      return net->forward(x.to(dtype)).to(torch::kDouble);
    };
    const at::Tensor exact = run(CpuKernels::kAten, torch::kDouble);
    const at::Tensor aten = run(CpuKernels::kAten, torch::kFloat);
    expect_as_accurate_as_libtorch(
        run(CpuKernels::kAuto, torch::kFloat), aten, exact, kResnetForwardBound, name);
    torch::InferenceMode inference;
    expect_as_accurate_as_libtorch(
        net->forward(x).to(torch::kDouble),
        aten,
        exact,
        kResnetForwardBound,
        name + " in inference mode");
  }
}

// small-cnn and VGG16 evaluate on the blocked layout (kernels auto) whether or not
// Winograd serves: each add_conv group is one oneDNN convolution with its batch norm folded
// into the weights and the ReLU fused, then oneDNN's max pooling. Held to LibTorch's float64
// pass as above, with the floor of 8 x (largest fan-in) u per layer, over the network's weight
// layers (small-cnn: 5, fan-in 9 x 32 = 288 <= 576; VGG16: 14, fan-in 9 x 512 = 4,608). Gray and
// RGB inputs (the first layer reads the plain layout), with and without batch norm.
TEST_F(KernelsTest, PlainStacksEvaluateOnTheBlockedLayoutWithinFloat32Rounding) {
  const double u = std::ldexp(1.0, -24);
  struct Case {
    std::string name;
    int64_t channels;
    bool batch_norm;
    double bound;
  };
  for (const Case& c :
       {Case{"small-cnn", 1, false, 5 * 8 * 576 * u},
        Case{"small-cnn", 1, true, 5 * 8 * 576 * u},
        Case{"small-cnn", 3, true, 5 * 8 * 576 * u},
        Case{"vgg16", 1, true, 14 * 8 * 4608 * u}}) {
    BackboneOptions o = options(c.name);
    o.in_channels = c.channels;
    o.input = 32;
    o.batch_norm = c.batch_norm;
    auto net = make_backbone(o);
    randomize_batch_norms(*net);
    net->eval();
    const at::Tensor x = torch::randn({6, c.channels, 32, 32});
    const at::Tensor exact = evaluate(*net, CpuKernels::kAten, torch::kDouble, x);
    const at::Tensor blocked = evaluate(*net, CpuKernels::kAuto, torch::kFloat, x);
    const std::string label = c.name + " channels " + std::to_string(c.channels) +
                              (c.batch_norm ? " with batch norm" : "");
    const at::Tensor aten = evaluate(*net, CpuKernels::kAten, torch::kFloat, x);
    expect_as_accurate_as_libtorch(blocked, aten, exact, c.bound, label);
    torch::InferenceMode inference;
    expect_as_accurate_as_libtorch(
        net->forward(x).to(torch::kDouble), aten, exact, c.bound, label + " in inference mode");
  }
}

// The blocked evaluation prepares each layer's weights once (folded, reordered): a weight
// or a running statistic changed in place (with or without counting a version), or
// another model, is seen at the next call.
TEST_F(KernelsTest, BlockedEvaluationSeesWeightsChangedSinceItsLastCall) {
  BackboneOptions o = options("small-cnn");
  o.input = 32;
  o.batch_norm = true;
  auto net = make_backbone(o);
  net->eval();
  const at::Tensor x = torch::randn({4, 1, 32, 32});
  const double bound = 5 * 8 * 576 * std::ldexp(1.0, -24);
  // Against LibTorch's float32 pass (each within `bound` of float64): a change of dtype
  // would give the parameters new storage, which alone makes the weights be prepared anew.
  auto agrees = [&](const std::shared_ptr<BackboneImpl>& m) {
    m->eval();
    const at::Tensor aten = evaluate(*m, CpuKernels::kAten, torch::kFloat, x);
    return relative_gap(evaluate(*m, CpuKernels::kAuto, torch::kFloat, x), aten) <= 2 * bound;
  };
  EXPECT_TRUE(agrees(net));
  {
    torch::NoGradGuard no_grad;
    net->named_parameters()["conv.0.weight"].mul_(-2);
  }
  EXPECT_TRUE(agrees(net)) << "conv weight changed";
  {
    torch::NoGradGuard no_grad;  // as LibTorch's SGD steps: its version stays as it was
    net->named_parameters()["conv.4.weight"].data().add_(0.25);
  }
  EXPECT_TRUE(agrees(net)) << "conv weight changed through data()";
  randomize_batch_norms(*net);
  EXPECT_TRUE(agrees(net)) << "batch norm changed";
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(agrees(make_backbone(o))) << "new model " << i;
  // The residual backbones' Winograd evaluation (resnet20's second stage at 16x16 inputs)
  // sees changed weights too (it transforms them on each call, keeping none).
  auto resnet = make_backbone(options("resnet20"));
  const at::Tensor small = torch::randn({4, 1, 16, 16});
  auto resnet_agrees = [&] {
    resnet->eval();
    const at::Tensor aten = evaluate(*resnet, CpuKernels::kAten, torch::kFloat, small);
    const at::Tensor blocked = evaluate(*resnet, CpuKernels::kAuto, torch::kFloat, small);
    return relative_gap(blocked, aten) <= 2 * 20 * 8 * 576 * std::ldexp(1.0, -24);
  };
  EXPECT_TRUE(resnet_agrees());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : resnet->parameters()) {
      if (p.dim() == 4) p.data().mul_(-1.5);
    }
  }
  EXPECT_TRUE(resnet_agrees()) << "resnet20 weights changed through data()";
  // Parameters made in inference mode keep no version counter.
  torch::InferenceMode inference;
  auto inference_net = make_backbone(o);
  inference_net->eval();
  const at::Tensor first = inference_net->forward(x);
  for (auto& p : inference_net->parameters()) p.mul_(0.5);
  EXPECT_FALSE(torch::equal(inference_net->forward(x), first));
  set_cpu_kernels(CpuKernels::kAten);
  const at::Tensor aten = inference_net->forward(x);
  set_cpu_kernels(CpuKernels::kAuto);
  EXPECT_LE(relative_gap(inference_net->forward(x), aten), 2 * bound);
}

/// `name` on 32x32 gray inputs, in eval mode.
std::shared_ptr<BackboneImpl> evaluating(const std::string& name) {
  BackboneOptions o = options(name);
  o.input = 32;
  auto net = make_backbone(o);
  net->eval();
  return net;
}

// Within a SteadyWeights scope (one pass in chunks) the prepared weights are compared
// with the model's tensors at their first use only: a change made inside the scope is
// not seen there (the scope promised none), and is seen once the scope ends.
TEST_F(KernelsTest, SteadyWeightsCheckThePreparedWeightsOncePerScope) {
  if (!blocked_kernels_available()) GTEST_SKIP() << "no blocked kernels in this oneDNN";
  auto net = evaluating("small-cnn");
  const at::Tensor x = torch::randn({4, 1, 32, 32});
  torch::NoGradGuard no_grad;
  const at::Tensor before = net->forward(x);
  {
    const SteadyWeights steady;
    EXPECT_TRUE(torch::equal(net->forward(x), before));
    net->named_parameters()["conv.0.weight"].data().mul_(-2);
    EXPECT_TRUE(torch::equal(net->forward(x), before)) << "compared again within the scope";
    const SteadyWeights inner;  // joins the outer scope
    EXPECT_TRUE(torch::equal(net->forward(x), before)) << "compared again in a nested scope";
  }
  const at::Tensor after = net->forward(x);
  set_cpu_kernels(CpuKernels::kAten);
  const double bound = 5 * 8 * 576 * std::ldexp(1.0, -24);
  EXPECT_LE(relative_gap(after, net->forward(x)), 2 * bound) << "the change after the scope";
  EXPECT_GT(relative_gap(after, before), 2 * bound);
}

// serve's workers run the primitives a first request made in another thread. With
// oneDNN's own scratchpad (one per thread) the Winograd convolution of small-cnn's third
// layer (32 -> 64 channels, 4x4 outputs) crashed there; each execution now brings its own.
TEST_F(KernelsTest, APassMadeInOneThreadRunsInAnother) {
  auto net = evaluating("small-cnn");
  torch::InferenceMode inference;
  const at::Tensor x = torch::randn({4, 1, 32, 32});
  const at::Tensor here = net->forward(x);
  at::Tensor there;
  std::thread([&] {
    torch::InferenceMode in_thread;
    there = net->forward(x);
  }).join();
  EXPECT_TRUE(torch::equal(here, there));
}

// A primitive sizes its scratchpad for the threads it was made with: after the thread
// count changes, passes run on primitives made for the new count (the caches key on it),
// and agree with the first within float32 rounding (threads split the sums differently).
TEST_F(KernelsTest, PassesFollowAChangedThreadCount) {
  auto net = evaluating("vgg16");
  torch::InferenceMode inference;
  const at::Tensor x = torch::randn({4, 1, 32, 32});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor one = net->forward(x);
  at::set_num_threads(std::max(2, threads));
  const at::Tensor more = net->forward(x);
  at::set_num_threads(threads);
  EXPECT_LE(
      relative_gap(more.to(torch::kDouble), one.to(torch::kDouble)),
      14 * 8 * 4608 * std::ldexp(1.0, -24));
}

// On 18x18 patches no stage of resnet20 tiles well enough for Winograd (9x9 at 32
// channels, 5x5 at 64), and evaluation keeps LibTorch's kernels: the same bits. (In
// colour: a grey stem is the one convolution auto runs otherwise, at::thnn_conv2d.)
TEST_F(KernelsTest, EvaluationWithoutWinogradKeepsLibTorchsKernels) {
  auto net = make_backbone(options("resnet20", 3));
  net->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({4, 3, 18, 18});
  set_cpu_kernels(CpuKernels::kAten);
  const at::Tensor aten = net->forward(x);
  set_cpu_kernels(CpuKernels::kAuto);
  EXPECT_TRUE(torch::equal(net->forward(x), aten));
}

// With gradients on, evaluation keeps LibTorch's kernels, so that the input's gradient
// (where the evidence is) flows.
TEST_F(KernelsTest, EvaluationWithGradientsGivesTheInputsGradient) {
  auto net = make_backbone(options("resnet20"));
  net->eval();
  const at::Tensor x = torch::randn({2, 1, 16, 16}).requires_grad_(true);
  net->forward(x).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0);
}

// Frozen convolutions (PatchClassifier::freeze_features) get no gradient, the rest do.
TEST_F(KernelsTest, FrozenConvolutionsGetNoGradient) {
  auto net = make_backbone(options("resnet20"));
  for (auto& p : net->parameters()) {
    if (p.dim() == 4) p.requires_grad_(false);
  }
  net->train();
  net->forward(torch::randn({4, 1, 16, 16})).sum().backward();
  for (auto& p : net->named_parameters()) {
    EXPECT_EQ(p.value().grad().defined(), p.value().dim() != 4) << p.key();
  }
}

/// The names of every autograd node behind `out`.
std::set<std::string> graph_nodes(const at::Tensor& out) {
  std::set<std::string> names;
  std::vector<std::shared_ptr<torch::autograd::Node>> todo = {out.grad_fn()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    std::shared_ptr<torch::autograd::Node> node = todo.back();
    todo.pop_back();
    if (!node || !seen.insert(node.get()).second) continue;
    names.insert(node->name());
    for (const auto& edge : node->next_edges()) todo.push_back(edge.function);
  }
  return names;
}

bool any_of_ours(const std::set<std::string>& nodes) {
  return std::any_of(nodes.begin(), nodes.end(), [](const std::string& name) {
    return name.find("patchwise") != std::string::npos;
  });
}

TEST_F(KernelsTest, AtenRunsLibTorchsKernelsEverywhere) {
  // small-cnn on grey input with batch norm: a grey convolution, fused batch norm and
  // max pooling, plain max pooling.
  BackboneOptions o = options("small-cnn");
  o.input = 32;
  o.batch_norm = true;
  auto net = make_backbone(o);
  net->train();
  const at::Tensor x = torch::randn({4, 1, 32, 32}).requires_grad_();
  const at::Tensor w = torch::randn({16, 1, 3, 3}, torch::requires_grad());
  const std::string conv = torch::conv2d(x, w).grad_fn()->name();
  const std::string pool = torch::max_pool2d(x, 2).grad_fn()->name();
  const std::string direct = at::thnn_conv2d(x, w, {3, 3}).grad_fn()->name();
  ASSERT_NE(direct, conv);

  set_cpu_kernels(CpuKernels::kAuto);
  const std::set<std::string> own = graph_nodes(net->forward(x));
  EXPECT_TRUE(any_of_ours(own)) << ::testing::PrintToString(own);
  EXPECT_EQ(own.count(direct), 1u) << ::testing::PrintToString(own);

  set_cpu_kernels(CpuKernels::kAten);
  const std::set<std::string> aten = graph_nodes(net->forward(x));
  EXPECT_FALSE(any_of_ours(aten)) << ::testing::PrintToString(aten);
  EXPECT_EQ(aten.count(direct), 0u) << ::testing::PrintToString(aten);
  EXPECT_EQ(aten.count(conv), 1u) << ::testing::PrintToString(aten);
  EXPECT_EQ(aten.count(pool), 1u) << ::testing::PrintToString(aten);
}

TEST_F(KernelsTest, NamesRoundTripAndUnknownOnesAreRefused) {
  for (const CpuKernels k : {CpuKernels::kAuto, CpuKernels::kAten}) {
    EXPECT_EQ(parse_cpu_kernels(cpu_kernels_name(k)), k);
  }
  EXPECT_THAT(
      [] { parse_cpu_kernels("winograd"); },
      ::testing::ThrowsMessage<OptionError>(
          ::testing::AllOf(HasSubstr("'winograd'"), HasSubstr("expected auto or aten"))));
}

}  // namespace
}  // namespace patchwise
