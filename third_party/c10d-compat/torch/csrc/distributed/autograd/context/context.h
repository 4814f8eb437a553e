#pragma once
// Stand-in for the PyTorch 1.13 header torch/csrc/distributed/autograd/context/context.h,
// which Debian's libtorch-dev does not ship but c10d/reducer.hpp includes.
// reducer.hpp only needs:
//   * torch::distributed::autograd::DistAutogradContext::GradCallback (static_assert that it
//     is std::function<bool(at::Tensor&)>), and
//   * torch::distributed::autograd::ContextPtr (a std::shared_ptr<DistAutogradContext>, held
//     in Reducer::RpcContext; same size/layout as the real one, so the Reducer object layout
//     matches libtorch_cpu.so).
// Never instantiate DistAutogradContext; it is only a name here (the real class lives in libtorch).
#include <functional>
#include <memory>
#include <ATen/core/Tensor.h>

namespace torch {
namespace distributed {
namespace autograd {

class DistAutogradContext {
 public:
  using GradCallback = std::function<bool(at::Tensor&)>;
};

using ContextPtr = std::shared_ptr<DistAutogradContext>;

} // namespace autograd
} // namespace distributed
} // namespace torch
