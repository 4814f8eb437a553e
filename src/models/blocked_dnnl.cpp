#include "blocked_dnnl.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <string>

namespace patchwise::detail::blocked {
namespace {

constexpr int64_t kTile = 4;  // Winograd F(4x4, 3x3)'s output tile

/// Outputs over tiled outputs of one side (the last tile may hang over the edge).
double tile_efficiency(int64_t side) {
  return double(side) / double((side + kTile - 1) / kTile * kTile);
}

}  // namespace

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

int64_t threads() { return at::get_num_threads(); }

dnnl::primitive_attr attributes(const dnnl::post_ops& ops) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_post_ops(ops);
  return attr;
}

memory::desc blocked_desc(const Dims& dims, int64_t block) {
  const auto tag = block == 16 ? memory::format_tag::nChw16c : memory::format_tag::nChw8c;
  return memory::desc(dims, memory::data_type::f32, tag);
}

memory::desc source_desc(const Dims& dims, bool plain) {
  return plain ? memory::desc(dims, memory::data_type::f32, memory::format_tag::nchw)
               : blocked_desc(dims);
}

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

Dims weight_dims(const at::Tensor& weight) {
  return Dims(weight.sizes().begin(), weight.sizes().end());
}

bool is_plain(const at::Tensor& x) { return x.dim() == 4; }

/// The [N,C,H,W] that a plain or blocked `x` holds.
Dims source_dims(const at::Tensor& x) {
  return is_plain(x) ? Dims(x.sizes().begin(), x.sizes().end()) : logical_dims(x);
}

bool reference(const dnnl::primitive_desc_base& pd) {
  return std::string(pd.impl_info_str()).rfind("ref", 0) == 0;
}

}  // namespace patchwise::detail::blocked
