// Evaluation on the blocked layout (blocked.h's conv_inference and max_pool_2x2): small-cnn's
// and VGG16's convolutions with their batch norm folded in and the ReLU fused, their
// weights prepared once per SteadyWeights scope, and oneDNN's pooling.

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "blocked.h"
#include "blocked_dnnl.h"
#include "patchwise/models/kernels.h"

namespace patchwise {
namespace {
std::atomic<uint64_t> g_next_steady{1};  ///< SteadyWeights scopes, numbered from 1
thread_local uint64_t t_steady = 0;      ///< this thread's scope, 0: none
}  // namespace

SteadyWeights::SteadyWeights() : outermost_(t_steady == 0) {
  if (outermost_) t_steady = g_next_steady++;
}

SteadyWeights::~SteadyWeights() {
  if (outermost_) t_steady = 0;
}

namespace detail::blocked {
namespace {

/// Prepared weights kept at most: a few dozen convolutions a model, for a few models.
constexpr size_t kPreparedKept = 1024;

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
/// when its first source does, and the oldest beyond kPreparedKept.
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
  if (cache.size() >= kPreparedKept) cache.erase(cache.begin());  // the oldest made
  cache.push_back(prepare(sources, make, layout));
  cache.back().steady = t_steady;
  return {cache.back().weight, cache.back().bias};
}

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

std::shared_ptr<InferencePrimitive> inference_conv(
    const Dims& src, const Dims& weight, int64_t pad, bool plain_src, bool relu) {
  static BoundedCache<std::array<int64_t, 11>, InferencePrimitive> cache(kPrimitivesKept);
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
  return cache.get(key, [&] { return make_inference_conv(src, weight, pad, plain_src, relu); });
}

struct PoolPrimitive {
  dnnl::pooling_forward::primitive_desc pd;
  dnnl::pooling_forward pool;
};

/// 2x2 max pooling of stride 2 on blocked [N,C,H,W], flooring odd sides.
std::unique_ptr<PoolPrimitive> make_pool(const Dims& src) {
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
  return p;
}

std::shared_ptr<PoolPrimitive> pool_primitive(const Dims& src) {
  static BoundedCache<std::pair<Dims, int64_t>, PoolPrimitive> cache(kPrimitivesKept);
  return cache.get({src, threads()}, [&] { return make_pool(src); });
}

}  // namespace

at::Tensor conv_inference(
    const at::Tensor& x, const std::vector<at::Tensor>& sources, const MakeWeights& make,
    int64_t pad, bool relu) {
  const at::Tensor src = x.contiguous();
  const std::shared_ptr<InferencePrimitive> held =
      inference_conv(source_dims(src), weight_dims(sources.at(0)), pad, is_plain(src), relu);
  InferencePrimitive& p = *held;
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
  const std::shared_ptr<PoolPrimitive> held = pool_primitive(logical_dims(src));
  PoolPrimitive& p = *held;
  at::Tensor y = empty_blocked(p.pd.dst_desc().dims(), src.options());
  run(p.pool,
      p.pd,
      {{DNNL_ARG_SRC, wrap(p.pd.src_desc(), src)}, {DNNL_ARG_DST, wrap(p.pd.dst_desc(), y)}});
  return y;
}

}  // namespace detail::blocked
}  // namespace patchwise
