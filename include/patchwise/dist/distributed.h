#pragma once
// Data-parallel training on PyTorch's c10d engine, the one DDP runs on: a TCPStore
// rendezvous at MASTER_ADDR:MASTER_PORT, a Gloo process group, parameters and
// buffers broadcast from rank 0, and gradients averaged by c10d's Reducer (bucketed,
// each bucket's allreduce started while the backward pass is still running). The
// c10d and Gloo headers stay in distributed.cpp; this header names none of them.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace patchwise {

/// Where a process sits in a data-parallel run, as torchrun describes it.
struct DistributedConfig {
  int64_t rank = 0;                 ///< RANK: 0..world_size-1; rank 0 logs and writes files
  int64_t world_size = 1;           ///< WORLD_SIZE: processes in the run; 1 = not distributed
  int64_t local_rank = 0;           ///< LOCAL_RANK: index on this machine
  int64_t local_world_size = 1;     ///< LOCAL_WORLD_SIZE: processes on this machine (threads are
                                    ///< divided among them)
  std::string master_addr;          ///< MASTER_ADDR: host of the rendezvous store
  int64_t master_port = 0;          ///< MASTER_PORT
  double timeout_seconds = 300;     ///< rendezvous and every collective (--dist-timeout)
  bool agent_store = false;         ///< TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent hosts
                                    ///< the store, so rank 0 must not bind the port again
  std::string restart_count = "0";  ///< TORCHELASTIC_RESTART_COUNT (key prefix per attempt)
  std::string socket_ifname;        ///< GLOO_SOCKET_IFNAME: the interface Gloo binds to

  bool enabled() const { return world_size > 1; }
};

/// Reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
/// torchrun's TORCHELASTIC_USE_AGENT_STORE / TORCHELASTIC_RESTART_COUNT and
/// GLOO_SOCKET_IFNAME through `getenv`. WORLD_SIZE unset or 1: not distributed, and
/// nothing else is read. Throws InputError naming the variable, its value and what
/// was expected (a rank outside 0..WORLD_SIZE-1, a missing MASTER_ADDR, a port
/// outside 1..65535, ...).
DistributedConfig distributed_config_from_env(
    const std::function<const char*(const char*)>& getenv = nullptr);

/// A failure of the run as a whole: a peer died, hung past the timeout or never
/// arrived. what() is one line naming this rank, what happened and, where known,
/// the peer's address.
class DistributedError : public std::runtime_error {
 public:
  explicit DistributedError(const std::string& message) : std::runtime_error(message) {}
};

/// One process's membership in the group. Every collective must be called by every
/// rank in the same order; a failure throws DistributedError.
class Distributed {
 public:
  /// Joins the group: connects to (rank 0: hosts) the TCPStore, waits until all
  /// world_size ranks have checked in, then builds the Gloo full mesh. Each wait is
  /// bounded by config.timeout_seconds.
  explicit Distributed(const DistributedConfig& config);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int64_t rank() const;
  int64_t world_size() const;
  const DistributedConfig& config() const;

  /// Copies rank 0's values into every rank's tensors, in place (one coalesced broadcast).
  void broadcast(const std::vector<at::Tensor>& tensors);
  /// Sums a CPU tensor over the ranks, in place. `doing` names the moment in errors.
  void allreduce_sum(at::Tensor& values, const std::string& doing = "an allreduce");
  /// The largest of every rank's `value`.
  int64_t allreduce_max(int64_t value, const std::string& doing = "an allreduce");
  /// Waits until every rank has arrived.
  void barrier();

  /// Registers the parameters with a c10d Reducer: from now on every backward pass
  /// averages their gradients across the ranks. `find_unused` lets some parameters
  /// go without a gradient in a step (costs a graph walk and a small allreduce per step).
  void attach_gradients(
      const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names,
      bool find_unused);
  /// Number of gradient buckets (after attach_gradients).
  int64_t buckets() const;
  /// Before each training forward pass.
  void before_forward();
  /// Between the forward pass and backward(), with the scalar that backward() starts from.
  void before_backward(const at::Tensor& loss);

  /// Median milliseconds of one blocking allreduce of `floats` float32 values over
  /// `repeats` runs (a collective: every rank must call it).
  double time_allreduce(int64_t floats, int repeats);

  /// Runs `work` (a backward pass, a collective); a communication failure inside it
  /// becomes a DistributedError that says the rank was doing `doing`.
  void guard(const std::string& doing, const std::function<void()>& work);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace patchwise
