#pragma once
// What the blocked kernels' files share (blocked.h): oneDNN's engine and stream, the
// layouts, running a primitive, and the bounded cache primitives are kept in. The
// training passes live in blocked_conv.cpp and blocked_norm.cpp, evaluation's own in
// blocked_eval.cpp, the choice of kernels in blocked.cpp.

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>

#include "patchwise/base/bounded_cache.h"

namespace patchwise::detail::blocked {

using dnnl::memory;
using Dims = memory::dims;

/// Primitives kept per kind (convolutions, batch norms, ...): a few shapes a model, times
/// batch sizes and thread counts; the least recently used go beyond it.
constexpr size_t kPrimitivesKept = 256;

constexpr int64_t kWinogradMin = 32;  // channels from which Winograd wins (blocked.cpp)

/// Whether 4x4 tiles cover an output of `height` x `width` with little waste (3/4).
bool tiles_well(int64_t height, int64_t width);
bool use_winograd(const Dims& src, const Dims& weight, const Dims& dst, int64_t stride);

dnnl::engine& cpu_engine();
dnnl::stream& cpu_stream();

/// LibTorch's thread count in this thread, which oneDNN's OpenMP regions follow (asking
/// sets it in a thread new to ATen). A primitive sizes its work for the threads it was
/// made with and must not run with more, so the caches key on it.
int64_t threads();

/// Attributes of every primitive here (with `ops` fused after it): the scratchpad is
/// given at each execution (run). oneDNN's own is kept per thread, and a Winograd
/// convolution made in one thread crashed when another ran it (serve's workers run what
/// a first request made).
dnnl::primitive_attr attributes(const dnnl::post_ops& ops = dnnl::post_ops());

/// Channels per block of the layout oneDNN's own kernels convolve here: 16 with AVX-512,
/// 8 with AVX2 (not counting its reference kernels, far slower than LibTorch's); 0 when
/// it has neither.
int64_t block_size();

/// [N,C,H,W] in blocks of `block` channels (16: nChw16c, 8: nChw8c), by default this
/// processor's (block_size()).
memory::desc blocked_desc(const Dims& dims, int64_t block = block_size());
/// A source of `dims` in plain NCHW (a network's first layer, any channels), or blocked.
memory::desc source_desc(const Dims& dims, bool plain);
/// The [N,C,H,W] a blocked tensor [N,C/b,H,W,b] holds.
Dims logical_dims(const at::Tensor& xb);
at::Tensor empty_blocked(const Dims& dims, const at::TensorOptions& options);
/// `t` as oneDNN sees it: its sizes and its own strides.
memory::desc strided_desc(const at::Tensor& t);
memory wrap(const memory::desc& desc, const at::Tensor& t);
/// Executes `primitive` of `pd` on `args` with a scratchpad of its own.
void run(
    const dnnl::primitive& primitive, const dnnl::primitive_desc_base& pd,
    std::unordered_map<int, memory> args);
/// Flat float storage for a tensor of layout `desc`.
at::Tensor empty_for(const memory::desc& desc, const at::TensorOptions& options);
void copy(memory& source, memory& target);
/// `t` in the layout `want`: its own memory when it has it, else a copy kept in `keep`.
memory in_layout(const at::Tensor& t, const memory::desc& want, at::Tensor& keep);

Dims weight_dims(const at::Tensor& weight);
/// Whether `x` is a plain [N,C,H,W] source rather than a blocked [N,C/b,H,W,b] one.
bool is_plain(const at::Tensor& x);
/// The [N,C,H,W] that a plain or blocked `x` holds.
Dims source_dims(const at::Tensor& x);

/// Whether oneDNN answered `pd` with its reference kernel (far slower than LibTorch's).
bool reference(const dnnl::primitive_desc_base& pd);

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

}  // namespace patchwise::detail::blocked
