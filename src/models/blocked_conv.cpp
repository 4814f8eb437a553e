// The blocked convolution for training (blocked.h's conv): oneDNN's forward pass and both
// backward ones on blocked activations, behind one autograd function.

#include <torch/torch.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "blocked.h"
#include "blocked_dnnl.h"
#include "patchwise/models/kernels.h"

namespace patchwise::detail::blocked {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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

/// A direct convolution of 32 channels at 16x16 in blocks of `block`, if oneDNN has one.
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

/// The primitives of one shape, made once and kept (kPrimitivesKept at most); evaluation
/// (`backward` false) makes the forward one alone.
std::shared_ptr<ConvPrimitives> conv_primitives(
    const Dims& src, const Dims& weight, int64_t stride, bool backward, bool plain) {
  static BoundedCache<std::array<int64_t, 10>, ConvPrimitives> cache(kPrimitivesKept);
  const std::array<int64_t, 10> key{
      src[0], src[1], src[2], src[3], weight[0], weight[2], stride, backward, plain, threads()};
  return cache.get(key, [&] { return make_conv(src, weight, stride, backward, plain); });
}

/// The primitives of the convolution of `x` (plain or blocked) by `weight`.
std::shared_ptr<ConvPrimitives> conv_primitives_for(
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
  const std::shared_ptr<ConvPrimitives> held = conv_primitives_for(xb, weight, stride, backward);
  ConvPrimitives& p = *held;
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
    const std::shared_ptr<ConvPrimitives> held =
        conv_primitives_for(xb, weight, ctx->saved_data["stride"].toInt(), true);
    ConvPrimitives& p = *held;
    const at::Tensor dy = grads[0].contiguous();
    const memory diff_dst = wrap(p.forward_pd.dst_desc(), dy);
    at::Tensor dx;
    if (ctx->needs_input_grad(0)) dx = data_gradient(p, xb, diff_dst, weight);
    at::Tensor dw;
    if (ctx->needs_input_grad(1)) dw = weight_gradient(p, xb, diff_dst, weight);
    return {dx, dw, at::Tensor()};
  }
};

}  // namespace

int64_t block_size() {
  static const int64_t block = has_direct_kernel(16) ? 16 : has_direct_kernel(8) ? 8 : 0;
  return block;
}

at::Tensor conv(const at::Tensor& xb, const at::Tensor& weight, int64_t stride) {
  if (!at::GradMode::is_enabled()) return conv_forward(xb.contiguous(), weight, stride, false);
  return BlockedConv::apply(xb, weight, stride);
}

bool holds_blocks(int64_t channels) { return block_size() > 0 && channels % block_size() == 0; }

}  // namespace patchwise::detail::blocked

namespace patchwise {

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
