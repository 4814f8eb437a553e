// oneDNN called directly on blocked activations, for training the residual backbones.
// LibTorch 1.13 reaches oneDNN only through its own convolution, which takes NCHW or
// channels-last tensors and lets oneDNN pick the direct algorithm; its Winograd kernels
// (jit_wino_4x3, AVX-512) need nChw16c on both sides. They compute 4x4 output tiles, so
// their cost follows the tiles while the direct kernel's follows the outputs. Measured on
// 2 cores of a Xeon (family 6, model 167), forward + both backward passes, Winograd's time
// over the direct kernel's, by channels and side (tile efficiency: outputs over tiled
// outputs): 32 at 16x16 0.74 and at 12x12 0.70 (1.0), at 14x14 0.90 (0.77), at 9x9 1.23
// (0.56); 64 at 8x8 0.57 (1.0), at 7x7 0.67 (0.77), at 6x6 0.90 and at 5x5 1.44 (0.56,
// 0.39); 16 at 32x32 1.36 and at 18x18 1.74. Hence Winograd from 32 channels where at
// least 3/4 of the tiled outputs are real.
//
// Without AVX-512 (oneDNN's AVX2 kernels: nChw8c, no Winograd) the blocked layout still
// saves the reorders and fuses batch norm with ReLU: with oneDNN and ATen held to AVX2 on
// the same Xeon (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2), a ResNet-20 training
// step ran at 158 against 142 images/s on LibTorch's kernels.

#include "blocked.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>

#include "patchwise/base/error.h"
#include "patchwise/models/kernels.h"

namespace patchwise {

namespace {
std::atomic<TrainKernels> g_train_kernels{TrainKernels::kAuto};
std::atomic<uint64_t> g_next_steady{1};  ///< SteadyWeights scopes, numbered from 1
thread_local uint64_t t_steady = 0;      ///< this thread's scope, 0: none
}  // namespace

SteadyWeights::SteadyWeights() : outermost_(t_steady == 0) {
  if (outermost_) t_steady = g_next_steady++;
}

SteadyWeights::~SteadyWeights() {
  if (outermost_) t_steady = 0;
}

TrainKernels parse_train_kernels(const std::string& name) {
  if (name == "auto") return TrainKernels::kAuto;
  if (name == "aten") return TrainKernels::kAten;
  throw OptionError("kernels", "'" + name + "' is not a kernel choice, expected auto or aten");
}

const char* train_kernels_name(TrainKernels k) {
  return k == TrainKernels::kAten ? "aten" : "auto";
}

void set_train_kernels(TrainKernels k) { g_train_kernels = k; }

TrainKernels train_kernels() { return g_train_kernels; }

namespace detail::blocked {
namespace {

using dnnl::memory;
using Dims = memory::dims;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kWinogradMin = 32;  // channels from which Winograd wins (see the top)
constexpr int64_t kTile = 4;          // Winograd F(4x4, 3x3)'s output tile

/// Outputs over tiled outputs of one side (the last tile may hang over the edge).
double tile_efficiency(int64_t side) {
  return double(side) / double((side + kTile - 1) / kTile * kTile);
}

bool tiles_well(int64_t height, int64_t width) {
  return tile_efficiency(height) * tile_efficiency(width) >= 0.75;
}

bool use_winograd(const Dims& src, const Dims& weight, const Dims& dst, int64_t stride) {
  return weight[2] == 3 && weight[3] == 3 && stride == 1 && src[1] >= kWinogradMin &&
         weight[0] >= kWinogradMin && tiles_well(dst[2], dst[3]);
}

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& cpu_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

/// LibTorch's thread count in this thread, which oneDNN's OpenMP regions follow (asking
/// sets it in a thread new to ATen). A primitive sizes its work for the threads it was
/// made with and must not run with more, so the caches below key on it.
int64_t threads() { return at::get_num_threads(); }

/// Attributes of every primitive here (with `ops` fused after it): the scratchpad is
/// given at each execution (run). oneDNN's own is kept per thread, and a Winograd
/// convolution made in one thread crashed when another ran it (serve's workers run what
/// a first request made).
dnnl::primitive_attr attributes(const dnnl::post_ops& ops = dnnl::post_ops()) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_post_ops(ops);
  return attr;
}

/// A direct convolution of 32 channels at 16x16 in blocks of `block`, if oneDNN has one.
bool has_direct_kernel(int64_t block);

/// Channels per block of the layout oneDNN's own kernels convolve here: 16 with AVX-512,
/// 8 with AVX2 (not counting its reference kernels, far slower than LibTorch's); 0 when
/// it has neither.
int64_t block_size() {
  static const int64_t block = has_direct_kernel(16) ? 16 : has_direct_kernel(8) ? 8 : 0;
  return block;
}

/// [N,C,H,W] in blocks of `block` channels (16: nChw16c, 8: nChw8c), by default this
/// processor's (block_size()).
memory::desc blocked_desc(const Dims& dims, int64_t block = block_size()) {
  const auto tag = block == 16 ? memory::format_tag::nChw16c : memory::format_tag::nChw8c;
  return memory::desc(dims, memory::data_type::f32, tag);
}

/// A source of `dims` in plain NCHW (a network's first layer, any channels), or blocked.
memory::desc source_desc(const Dims& dims, bool plain) {
  return plain ? memory::desc(dims, memory::data_type::f32, memory::format_tag::nchw)
               : blocked_desc(dims);
}

/// The [N,C,H,W] a blocked tensor [N,C/b,H,W,b] holds.
Dims logical_dims(const at::Tensor& xb) {
  return {xb.size(0), xb.size(1) * xb.size(4), xb.size(2), xb.size(3)};
}

at::Tensor empty_blocked(const Dims& dims, const at::TensorOptions& options) {
  const int64_t block = block_size();
  return at::empty({dims[0], dims[1] / block, dims[2], dims[3], block}, options);
}

/// `t` as oneDNN sees it: its sizes and its own strides.
memory::desc strided_desc(const at::Tensor& t) {
  const Dims dims(t.sizes().begin(), t.sizes().end());
  const Dims strides(t.strides().begin(), t.strides().end());
  return memory::desc(dims, memory::data_type::f32, strides);
}

memory wrap(const memory::desc& desc, const at::Tensor& t) {
  return memory(desc, cpu_engine(), t.data_ptr());
}

/// Executes `primitive` of `pd` on `args` with a scratchpad of its own.
void run(
    const dnnl::primitive& primitive, const dnnl::primitive_desc_base& pd,
    std::unordered_map<int, memory> args) {
  const memory::desc scratch = pd.scratchpad_desc();
  at::Tensor bytes;
  if (scratch.get_size() > 0) {
    bytes = at::empty({static_cast<int64_t>(scratch.get_size())}, at::kByte);
    args.emplace(DNNL_ARG_SCRATCHPAD, wrap(scratch, bytes));
  }
  primitive.execute(cpu_stream(), args);
}

/// Flat float storage for a tensor of layout `desc`.
at::Tensor empty_for(const memory::desc& desc, const at::TensorOptions& options) {
  return at::empty({static_cast<int64_t>(desc.get_size() / sizeof(float))}, options);
}

void copy(memory& source, memory& target) {
  dnnl::reorder(source, target).execute(cpu_stream(), source, target);
}

/// `t` in the layout `want`: its own memory when it has it, else a copy kept in `keep`.
memory in_layout(const at::Tensor& t, const memory::desc& want, at::Tensor& keep) {
  const memory::desc have = strided_desc(t);
  memory source = wrap(have, t);
  if (have == want) return source;
  keep = empty_for(want, t.options());
  memory target = wrap(want, keep);
  copy(source, target);
  return target;
}

// ------------------------------------------------------------ prepared weights

/// A convolution's weights and bias as evaluation's primitive takes them (the weights in
/// its layout), with the values of the tensors they were made from.
struct PreparedWeights {
  c10::weak_intrusive_ptr<c10::TensorImpl> owner;  // the first source: its entries go with it
  std::vector<at::Tensor> values;                  // the sources' values then
  memory::desc layout;
  at::Tensor weight, bias;
  uint64_t steady = 0;  // the SteadyWeights scope in which `values` last matched

  PreparedWeights(const at::Tensor& first, const memory::desc& layout)
      : owner(c10::intrusive_ptr<c10::TensorImpl>::reclaim_copy(first.unsafeGetTensorImpl())),
        layout(layout) {}

  /// Made from sources like `now` (the same first tensor, as many) for `want`.
  bool made_for(const std::vector<at::Tensor>& now, const memory::desc& want) const {
    return layout == want && owner._unsafe_get_target() == now[0].unsafeGetTensorImpl() &&
           !owner.expired() && now.size() == values.size();
  }

  /// Whether every source of `now` (made_for) holds the bytes they were made from. Values,
  /// not version counters: LibTorch's SGD steps through Tensor::data(), which leaves a
  /// parameter's version as it was.
  bool same_values(const std::vector<at::Tensor>& now) const {
    // Byte for byte in the tensors' own layout: no copy on each call.
    for (size_t i = 0; i < now.size(); ++i) {
      const at::Tensor& t = now[i];
      const at::Tensor& v = values[i];
      if (!t.is_non_overlapping_and_dense() || !t.sizes().equals(v.sizes()) ||
          !t.strides().equals(v.strides()) || t.scalar_type() != v.scalar_type() ||
          std::memcmp(t.data_ptr(), v.data_ptr(), t.nbytes()) != 0) {
        return false;
      }
    }
    return true;
  }
};

/// The weights of `make` from `sources` in `layout`, and its bias.
PreparedWeights prepare(
    const std::vector<at::Tensor>& sources, const MakeWeights& make, const memory::desc& layout) {
  PreparedWeights entry(sources[0], layout);
  for (const at::Tensor& t : sources) entry.values.push_back(t.clone());  // keeps the strides
  auto [weight, bias] = make();
  at::Tensor keep;
  in_layout(weight, layout, keep);
  // A copy in any case: a weight already in the primitive's layout (no batch norm folded,
  // no reorder) would otherwise be the model's parameter itself, and a SteadyWeights
  // scope would see a change made within it on one processor and not on another.
  entry.weight = keep.defined() ? keep : weight.clone(at::MemoryFormat::Contiguous);
  if (bias.defined()) entry.bias = bias.clone(at::MemoryFormat::Contiguous);
  return entry;
}

/// The prepared weight and bias of `sources` for `layout`: remembered, remade when a
/// source's values change (checked once per SteadyWeights scope). A model's entries go
/// when its first source does.
std::pair<at::Tensor, at::Tensor> prepared_weights(
    const std::vector<at::Tensor>& sources, const MakeWeights& make, const memory::desc& layout) {
  static std::mutex mutex;
  static std::vector<PreparedWeights> cache;
  std::lock_guard<std::mutex> lock(mutex);
  for (PreparedWeights& entry : cache) {
    if (!entry.made_for(sources, layout)) continue;
    if (t_steady != 0 && entry.steady == t_steady) return {entry.weight, entry.bias};
    if (entry.same_values(sources)) {
      entry.steady = t_steady;
      return {entry.weight, entry.bias};
    }
  }
  const c10::TensorImpl* owner = sources[0].unsafeGetTensorImpl();
  cache.erase(
      std::remove_if(
          cache.begin(),
          cache.end(),
          [&](const PreparedWeights& e) {
            return e.owner.expired() ||
                   (e.owner._unsafe_get_target() == owner && e.layout == layout);
          }),
      cache.end());
  cache.push_back(prepare(sources, make, layout));
  cache.back().steady = t_steady;
  return {cache.back().weight, cache.back().bias};
}

// ---------------------------------------------------------------- convolution

struct ConvPrimitives {
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights weights;
};

/// A convolution's shapes and layouts: a blocked source and output, weights in the
/// layout oneDNN prefers, padding k/2. Each pass is made for a given source layout.
struct ConvShape {
  memory::desc src, weights, dst;
  Dims strides, padding;

  ConvShape(const Dims& s, const Dims& w, int64_t stride, int64_t block = block_size())
      : src(blocked_desc(s, block)),
        weights(w, memory::data_type::f32, memory::format_tag::any),
        dst(blocked_desc(
            {s[0],
             w[0],
             (s[2] + 2 * (w[2] / 2) - w[2]) / stride + 1,
             (s[3] + 2 * (w[3] / 2) - w[3]) / stride + 1},
            block)),
        strides{stride, stride},
        padding{w[2] / 2, w[3] / 2} {}

  dnnl::convolution_forward::primitive_desc forward(
      dnnl::algorithm algorithm, const memory::desc& source) const {
    return dnnl::convolution_forward::primitive_desc(
        {dnnl::prop_kind::forward_training,
         algorithm,
         source,
         weights,
         dst,
         strides,
         padding,
         padding},
        attributes(),
        cpu_engine());
  }
  dnnl::convolution_forward::primitive_desc forward(dnnl::algorithm algorithm) const {
    return forward(algorithm, src);
  }
  dnnl::convolution_backward_data::primitive_desc data(
      dnnl::algorithm algorithm, const memory::desc& source,
      const dnnl::convolution_forward::primitive_desc& hint) const {
    return dnnl::convolution_backward_data::primitive_desc(
        {algorithm, source, weights, dst, strides, padding, padding},
        attributes(),
        cpu_engine(),
        hint);
  }
  dnnl::convolution_backward_weights::primitive_desc weights_of(
      dnnl::algorithm algorithm, const memory::desc& source,
      const dnnl::convolution_forward::primitive_desc& hint) const {
    return dnnl::convolution_backward_weights::primitive_desc(
        {algorithm, source, weights, dst, strides, padding, padding},
        attributes(),
        cpu_engine(),
        hint);
  }
};

/// Whether oneDNN answered `pd` with its reference kernel (far slower than LibTorch's).
bool reference(const dnnl::primitive_desc_base& pd) {
  return std::string(pd.impl_info_str()).rfind("ref", 0) == 0;
}

/// make(source) for the first of `sources` that oneDNN's own kernels serve; if none
/// does, for the first (its reference kernel).
template <typename Make>
auto own_kernels(const std::vector<memory::desc>& sources, Make&& make) {
  for (const memory::desc& source : sources) {
    auto pd = make(source);
    if (!reference(pd)) return pd;
  }
  return make(sources.front());
}

/// make(algorithm) with Winograd when `winograd`, else (or when oneDNN has no Winograd
/// kernel for the shape) with the direct algorithm.
template <typename Make>
auto winograd_or_direct(bool winograd, Make&& make) {
  if (winograd) {
    try {
      return make(dnnl::algorithm::convolution_winograd);
    } catch (const dnnl::error&) {
    }
  }
  return make(dnnl::algorithm::convolution_direct);
}

bool has_direct_kernel(int64_t block) {
  try {
    const ConvShape c({16, 32, 16, 16}, {32, 32, 3, 3}, 1, block);
    const auto direct = dnnl::algorithm::convolution_direct;
    const auto forward = c.forward(direct);
    // Training takes the same layout: held to SSE4.1, oneDNN 2.6 has a forward kernel for
    // nChw8c but computes both gradients with its reference kernels (backbone_test ran 90x
    // slower there), so such a processor keeps LibTorch's kernels.
    return !reference(forward) && !reference(c.data(direct, c.src, forward)) &&
           !reference(c.weights_of(direct, c.src, forward));
  } catch (const dnnl::error&) {
    return false;
  }
}

/// The forward primitive, and with `backward` both backward ones (left empty without).
/// A `plain` source is read as NCHW where oneDNN's own kernels take it, else in blocks
/// (its channels padded): held to AVX2, oneDNN 2.6 has a first-layer forward kernel for
/// NCHW but computes the weights' gradient from NCHW only with its reference kernel
/// (half a second for a 1-channel stem on 256 patches of 32x32); never Winograd.
std::unique_ptr<ConvPrimitives> make_conv(
    const Dims& src, const Dims& weight, int64_t stride, bool backward, bool plain) {
  const ConvShape c(src, weight, stride);
  const bool winograd = !plain && use_winograd(src, weight, c.dst.dims(), stride);
  std::vector<memory::desc> sources{c.src};
  if (plain) sources.insert(sources.begin(), source_desc(src, true));
  return winograd_or_direct(winograd, [&](dnnl::algorithm algorithm) {
    auto p = std::make_unique<ConvPrimitives>();
    p->forward_pd = own_kernels(sources, [&](auto& s) { return c.forward(algorithm, s); });
    p->forward = dnnl::convolution_forward(p->forward_pd);
    if (!backward) return p;
    p->data_pd = own_kernels(sources, [&](auto& s) { return c.data(algorithm, s, p->forward_pd); });
    p->weights_pd =
        own_kernels(sources, [&](auto& s) { return c.weights_of(algorithm, s, p->forward_pd); });
    p->data = dnnl::convolution_backward_data(p->data_pd);
    p->weights = dnnl::convolution_backward_weights(p->weights_pd);
    return p;
  });
}

/// The primitives of one shape, made once per process; evaluation (`backward` false)
/// makes the forward one alone.
ConvPrimitives& conv_primitives(
    const Dims& src, const Dims& weight, int64_t stride, bool backward, bool plain) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 10>, std::unique_ptr<ConvPrimitives>> cache;
  const std::array<int64_t, 10> key{
      src[0], src[1], src[2], src[3], weight[0], weight[2], stride, backward, plain, threads()};
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[key];
  if (!slot) slot = make_conv(src, weight, stride, backward, plain);
  return *slot;
}

Dims weight_dims(const at::Tensor& weight) {
  return Dims(weight.sizes().begin(), weight.sizes().end());
}

/// Whether `x` is a plain [N,C,H,W] source rather than a blocked [N,C/b,H,W,b] one.
bool is_plain(const at::Tensor& x) { return x.dim() == 4; }

/// The [N,C,H,W] that a plain or blocked `x` holds.
Dims source_dims(const at::Tensor& x) {
  return is_plain(x) ? Dims(x.sizes().begin(), x.sizes().end()) : logical_dims(x);
}

/// The primitives of the convolution of `x` (plain or blocked) by `weight`.
ConvPrimitives& conv_primitives_for(
    const at::Tensor& x, const at::Tensor& weight, int64_t stride, bool backward) {
  return conv_primitives(source_dims(x), weight_dims(weight), stride, backward, is_plain(x));
}

/// `x` (contiguous, plain or blocked) as a pass's source of layout `want`: its own
/// memory, or for a plain `x` that the pass reads in blocks a copy kept in `keep`.
memory source_memory(const at::Tensor& x, const memory::desc& want, at::Tensor& keep) {
  return is_plain(x) ? in_layout(x, want, keep) : wrap(want, x);
}

/// A tensor as empty_like(`like`) makes it (its sizes and memory format), filled by
/// `fill` with memory of layout `want`: its own where it has that layout (a blocked
/// tensor always does), else a buffer reordered into it afterwards.
template <typename Fill>
at::Tensor filled_as(const at::Tensor& like, const memory::desc& want, Fill&& fill) {
  at::Tensor out = at::empty_like(like);
  const bool own = like.dim() == 5 || want == strided_desc(out);
  const at::Tensor inner = own ? out : empty_for(want, out.options());  // outlives `filled`
  memory filled = wrap(want, inner);
  fill(filled);
  if (!own) {
    memory target = wrap(strided_desc(out), out);
    copy(filled, target);
  }
  return out;
}

/// The gradient of the weights, in the weight's own memory format.
at::Tensor weight_gradient(
    ConvPrimitives& p, const at::Tensor& xb, const memory& diff_dst, const at::Tensor& weight) {
  at::Tensor keep;
  const memory src = source_memory(xb, p.weights_pd.src_desc(), keep);
  return filled_as(weight, p.weights_pd.diff_weights_desc(), [&](const memory& diff_w) {
    run(p.weights,
        p.weights_pd,
        {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_w}});
  });
}

/// The gradient of the source `xb`, in its own layout.
at::Tensor data_gradient(
    ConvPrimitives& p, const at::Tensor& xb, const memory& diff_dst, const at::Tensor& weight) {
  at::Tensor keep;
  const memory w = in_layout(weight, p.data_pd.weights_desc(), keep);
  return filled_as(xb, p.data_pd.diff_src_desc(), [&](const memory& diff_src) {
    run(p.data,
        p.data_pd,
        {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, diff_src}});
  });
}

/// The convolution of a contiguous `xb`, blocked or plain, without autograd; `backward`:
/// the backward pass will follow.
at::Tensor conv_forward(
    const at::Tensor& xb, const at::Tensor& weight, int64_t stride, bool backward) {
  ConvPrimitives& p = conv_primitives_for(xb, weight, stride, backward);
  at::Tensor y = empty_blocked(p.forward_pd.dst_desc().dims(), xb.options());
  // The weights are put in the primitive's layout on each call, in evaluation too:
  // keeping them (prepared_weights) gave the residual backbones' inference no measurable
  // gain and ResNet-18's 100 MB more peak memory (patchwise_bench resnet18_infer: 474
  // against 375 MB).
  at::Tensor keep;
  const memory w = in_layout(weight, p.forward_pd.weights_desc(), keep);
  at::Tensor source;
  run(p.forward,
      p.forward_pd,
      {{DNNL_ARG_SRC, source_memory(xb, p.forward_pd.src_desc(), source)},
       {DNNL_ARG_WEIGHTS, w},
       {DNNL_ARG_DST, wrap(p.forward_pd.dst_desc(), y)}});
  return y;
}

class BlockedConv : public torch::autograd::Function<BlockedConv> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight, int64_t stride) {
    const at::Tensor xb = input.contiguous();
    at::Tensor y = conv_forward(xb, weight, stride, /*backward=*/true);
    ctx->save_for_backward({xb, weight});
    ctx->saved_data["stride"] = stride;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& xb = saved[0];
    const at::Tensor& weight = saved[1];
    ConvPrimitives& p = conv_primitives_for(xb, weight, ctx->saved_data["stride"].toInt(), true);
    const at::Tensor dy = grads[0].contiguous();
    const memory diff_dst = wrap(p.forward_pd.dst_desc(), dy);
    at::Tensor dx;
    if (ctx->needs_input_grad(0)) dx = data_gradient(p, xb, diff_dst, weight);
    at::Tensor dw;
    if (ctx->needs_input_grad(1)) dw = weight_gradient(p, xb, diff_dst, weight);
    return {dx, dw, at::Tensor()};
  }
};

// ----------------------------------------------------------------- batch norm

struct NormPrimitives {
  dnnl::batch_normalization_forward::primitive_desc forward_pd;
  dnnl::batch_normalization_backward::primitive_desc backward_pd;
  dnnl::batch_normalization_forward forward;
  dnnl::batch_normalization_backward backward;
};

/// Training's primitives (the batch's statistics, forward and backward), or with
/// `inference` the forward alone with given statistics.
NormPrimitives& norm_primitives(const Dims& dims, float eps, bool relu, bool inference = false) {
  static std::mutex mutex;
  static std::map<std::tuple<Dims, float, bool, bool, int64_t>, std::unique_ptr<NormPrimitives>>
      cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[{dims, eps, relu, inference, threads()}];
  if (slot) return *slot;
  using flags = dnnl::normalization_flags;
  const flags f = relu ? flags::use_scale | flags::use_shift | flags::fuse_norm_relu
                       : flags::use_scale | flags::use_shift;
  const memory::desc d = blocked_desc(dims);
  auto p = std::make_unique<NormPrimitives>();
  if (inference) {
    p->forward_pd = dnnl::batch_normalization_forward::primitive_desc(
        {dnnl::prop_kind::forward_inference, d, eps, f | flags::use_global_stats},
        attributes(),
        cpu_engine());
    p->forward = dnnl::batch_normalization_forward(p->forward_pd);
    slot = std::move(p);
    return *slot;
  }
  p->forward_pd = dnnl::batch_normalization_forward::primitive_desc(
      {dnnl::prop_kind::forward_training, d, eps, f}, attributes(), cpu_engine());
  p->backward_pd = dnnl::batch_normalization_backward::primitive_desc(
      {dnnl::prop_kind::backward, d, d, eps, f}, attributes(), cpu_engine(), p->forward_pd);
  p->forward = dnnl::batch_normalization_forward(p->forward_pd);
  p->backward = dnnl::batch_normalization_backward(p->backward_pd);
  slot = std::move(p);
  return *slot;
}

class BlockedBatchNorm : public torch::autograd::Function<BlockedBatchNorm> {
 public:
  /// `running` holds running_mean and running_var, updated with `momentum`.
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
      const at::Tensor& bias, at::Tensor running_mean, at::Tensor running_var, double momentum,
      double eps, bool relu) {
    const at::Tensor xb = input.contiguous();
    const Dims dims = logical_dims(xb);
    NormPrimitives& p = norm_primitives(dims, static_cast<float>(eps), relu);
    const at::Tensor scale = weight.contiguous(), shift = bias.contiguous();
    at::Tensor y = at::empty_like(xb);
    at::Tensor mean = at::empty({dims[1]}, xb.options()), var = at::empty({dims[1]}, xb.options());
    at::Tensor ws = relu ? at::empty(
                               {int64_t(p.forward_pd.workspace_desc().get_size())},
                               xb.options().dtype(at::kByte))
                         : at::Tensor();
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, wrap(p.forward_pd.src_desc(), xb)},
        {DNNL_ARG_DST, wrap(p.forward_pd.dst_desc(), y)},
        {DNNL_ARG_MEAN, wrap(p.forward_pd.mean_desc(), mean)},
        {DNNL_ARG_VARIANCE, wrap(p.forward_pd.variance_desc(), var)},
        {DNNL_ARG_SCALE, wrap(p.forward_pd.weights_desc(), scale)},
        {DNNL_ARG_SHIFT, wrap(p.forward_pd.weights_desc(), shift)}};
    if (relu) args.emplace(DNNL_ARG_WORKSPACE, wrap(p.forward_pd.workspace_desc(), ws));
    run(p.forward, p.forward_pd, args);
    // The running variance is unbiased, as ATen's: the batch's times n / (n - 1).
    const double count = double(dims[0] * dims[2] * dims[3]);
    running_mean.mul_(1 - momentum).add_(mean, momentum);
    running_var.mul_(1 - momentum).add_(var, momentum * count / std::max(count - 1, 1.0));
    ctx->save_for_backward({xb, scale, shift, mean, var, ws});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &xb = s[0], &scale = s[1], &shift = s[2], &mean = s[3], &var = s[4],
                     &ws = s[5];
    const bool relu = ctx->saved_data["relu"].toBool();
    const Dims dims = logical_dims(xb);
    NormPrimitives& p = norm_primitives(dims, float(ctx->saved_data["eps"].toDouble()), relu);
    const at::Tensor dy = grads[0].contiguous();
    at::Tensor dx = at::empty_like(xb);
    at::Tensor dscale = at::empty_like(scale), dshift = at::empty_like(shift);
    const auto& pd = p.backward_pd;
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, wrap(pd.src_desc(), xb)},
        {DNNL_ARG_DIFF_DST, wrap(pd.diff_dst_desc(), dy)},
        {DNNL_ARG_MEAN, wrap(pd.mean_desc(), mean)},
        {DNNL_ARG_VARIANCE, wrap(pd.variance_desc(), var)},
        {DNNL_ARG_SCALE, wrap(pd.weights_desc(), scale)},
        {DNNL_ARG_SHIFT, wrap(pd.weights_desc(), shift)},
        {DNNL_ARG_DIFF_SRC, wrap(pd.diff_src_desc(), dx)},
        {DNNL_ARG_DIFF_SCALE, wrap(pd.diff_weights_desc(), dscale)},
        {DNNL_ARG_DIFF_SHIFT, wrap(pd.diff_weights_desc(), dshift)}};
    if (relu) args.emplace(DNNL_ARG_WORKSPACE, wrap(pd.workspace_desc(), ws));
    run(p.backward, p.backward_pd, args);
    return {
        dx, dscale, dshift, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

/// Batch norm with the layer's running statistics, without autograd (evaluation).
at::Tensor batch_norm_inference(const at::Tensor& xb, torch::nn::BatchNorm2dImpl& bn, bool relu) {
  const Dims dims = logical_dims(xb);
  NormPrimitives& p = norm_primitives(dims, float(bn.options.eps()), relu, /*inference=*/true);
  const at::Tensor scale = bn.weight.contiguous(), shift = bn.bias.contiguous();
  at::Tensor y = at::empty_like(xb);
  const auto& pd = p.forward_pd;
  run(p.forward,
      pd,
      {{DNNL_ARG_SRC, wrap(pd.src_desc(), xb)},
       {DNNL_ARG_DST, wrap(pd.dst_desc(), y)},
       {DNNL_ARG_MEAN, wrap(pd.mean_desc(), bn.running_mean)},
       {DNNL_ARG_VARIANCE, wrap(pd.variance_desc(), bn.running_var)},
       {DNNL_ARG_SCALE, wrap(pd.weights_desc(), scale)},
       {DNNL_ARG_SHIFT, wrap(pd.weights_desc(), shift)}});
  return y;
}

// ----------------------------------------------------------------- evaluation

struct InferencePrimitive {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward conv;
};

/// Evaluation's convolution of one shape: stride 1, padding `pad`, a bias, ReLU fused
/// with `relu`; a plain [N,C,H,W] source with `plain_src` (a network's first layer),
/// blocked otherwise; a blocked output. Winograd where training would take it.
std::unique_ptr<InferencePrimitive> make_inference_conv(
    const Dims& src, const Dims& weight, int64_t pad, bool plain_src, bool relu) {
  const Dims dst{
      src[0], weight[0], src[2] + 2 * pad - weight[2] + 1, src[3] + 2 * pad - weight[3] + 1};
  const memory::desc src_d = source_desc(src, plain_src);
  const memory::desc weights_d(weight, memory::data_type::f32, memory::format_tag::any);
  const memory::desc bias_d({weight[0]}, memory::data_type::f32, memory::format_tag::x);
  dnnl::post_ops ops;
  if (relu) ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  const dnnl::primitive_attr attr = attributes(ops);
  const bool winograd = !plain_src && use_winograd(src, weight, dst, 1);
  return winograd_or_direct(winograd, [&](dnnl::algorithm algorithm) {
    auto p = std::make_unique<InferencePrimitive>();
    p->pd = dnnl::convolution_forward::primitive_desc(
        {dnnl::prop_kind::forward_inference,
         algorithm,
         src_d,
         weights_d,
         bias_d,
         blocked_desc(dst),
         {1, 1},
         {pad, pad},
         {pad, pad}},
        attr,
        cpu_engine());
    p->conv = dnnl::convolution_forward(p->pd);
    return p;
  });
}

InferencePrimitive& inference_conv(
    const Dims& src, const Dims& weight, int64_t pad, bool plain_src, bool relu) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 11>, std::unique_ptr<InferencePrimitive>> cache;
  const std::array<int64_t, 11> key{
      src[0],
      src[1],
      src[2],
      src[3],
      weight[0],
      weight[2],
      weight[3],
      pad,
      plain_src,
      relu,
      threads()};
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[key];
  if (!slot) slot = make_inference_conv(src, weight, pad, plain_src, relu);
  return *slot;
}

struct PoolPrimitive {
  dnnl::pooling_forward::primitive_desc pd;
  dnnl::pooling_forward pool;
};

/// 2x2 max pooling of stride 2 on blocked [N,C,H,W], flooring odd sides.
PoolPrimitive& pool_primitive(const Dims& src) {
  static std::mutex mutex;
  static std::map<std::pair<Dims, int64_t>, std::unique_ptr<PoolPrimitive>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[{src, threads()}];
  if (slot) return *slot;
  auto p = std::make_unique<PoolPrimitive>();
  const Dims dst{src[0], src[1], src[2] / 2, src[3] / 2};
  p->pd = dnnl::pooling_forward::primitive_desc(
      {dnnl::prop_kind::forward_inference,
       dnnl::algorithm::pooling_max,
       blocked_desc(src),
       blocked_desc(dst),
       {2, 2},
       {2, 2},
       {0, 0},
       {0, 0}},
      attributes(),
      cpu_engine());
  p->pool = dnnl::pooling_forward(p->pd);
  slot = std::move(p);
  return *slot;
}

}  // namespace

bool use_for(const at::Tensor& x) {
  return train_kernels() == TrainKernels::kAuto && x.device().is_cpu() &&
         x.scalar_type() == at::kFloat && !at::autocast::is_cpu_enabled() && block_size() > 0;
}

bool winograd_for(int64_t channels, int64_t height, int64_t width) {
  return channels >= kWinogradMin && tiles_well(height, width) && winograd_available();
}

at::Tensor mean_pool(const at::Tensor& xb) {
  return xb.mean({2, 3}).reshape({xb.size(0), xb.size(1) * xb.size(4)});
}

at::Tensor conv(const at::Tensor& xb, const at::Tensor& weight, int64_t stride) {
  if (!at::GradMode::is_enabled()) return conv_forward(xb.contiguous(), weight, stride, false);
  return BlockedConv::apply(xb, weight, stride);
}

bool holds_blocks(int64_t channels) { return block_size() > 0 && channels % block_size() == 0; }

at::Tensor conv_inference(
    const at::Tensor& x, const std::vector<at::Tensor>& sources, const MakeWeights& make,
    int64_t pad, bool relu) {
  const at::Tensor src = x.contiguous();
  InferencePrimitive& p =
      inference_conv(source_dims(src), weight_dims(sources.at(0)), pad, is_plain(src), relu);
  const auto [weight, bias] = prepared_weights(sources, make, p.pd.weights_desc());
  at::Tensor y = empty_blocked(p.pd.dst_desc().dims(), src.options());
  run(p.conv,
      p.pd,
      {{DNNL_ARG_SRC, wrap(p.pd.src_desc(), src)},
       {DNNL_ARG_WEIGHTS, wrap(p.pd.weights_desc(), weight)},
       {DNNL_ARG_BIAS, wrap(p.pd.bias_desc(), bias)},
       {DNNL_ARG_DST, wrap(p.pd.dst_desc(), y)}});
  return y;
}

at::Tensor max_pool_2x2(const at::Tensor& xb) {
  const at::Tensor src = xb.contiguous();
  PoolPrimitive& p = pool_primitive(logical_dims(src));
  at::Tensor y = empty_blocked(p.pd.dst_desc().dims(), src.options());
  run(p.pool,
      p.pd,
      {{DNNL_ARG_SRC, wrap(p.pd.src_desc(), src)}, {DNNL_ARG_DST, wrap(p.pd.dst_desc(), y)}});
  return y;
}

at::Tensor from_blocked(const at::Tensor& xb) {
  return xb.permute({0, 1, 4, 2, 3})
      .reshape({xb.size(0), xb.size(1) * xb.size(4), xb.size(2), xb.size(3)});
}

at::Tensor batch_norm(const at::Tensor& xb, torch::nn::BatchNorm2dImpl& bn, bool relu) {
  const auto& o = bn.options;
  if (!o.affine() || !o.track_running_stats()) {
    throw std::logic_error("blocked::batch_norm: needs an affine layer with running statistics");
  }
  if (!bn.is_training()) return batch_norm_inference(xb.contiguous(), bn, relu);
  bn.num_batches_tracked.add_(1);
  const double momentum =
      o.momentum() ? *o.momentum() : 1.0 / double(bn.num_batches_tracked.item<int64_t>());
  return BlockedBatchNorm::apply(
      xb, bn.weight, bn.bias, bn.running_mean, bn.running_var, momentum, o.eps(), relu);
}

}  // namespace detail::blocked

bool blocked_kernels_available() { return detail::blocked::block_size() > 0; }

bool winograd_available() {
  static const bool available = [] {
    try {
      const detail::blocked::ConvShape c({16, 32, 16, 16}, {32, 32, 3, 3}, 1, 16);
      c.forward(dnnl::algorithm::convolution_winograd);
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return available;
}

}  // namespace patchwise
