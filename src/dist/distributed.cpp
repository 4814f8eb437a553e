#include "patchwise/dist/distributed.h"

#include <fmt/format.h>
#include <glog/logging.h>
#include <torch/torch.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>
#include <unordered_map>

// Built with USE_C10D_GLOO and USE_DISTRIBUTED (ProcessGroupGloo.hpp is empty without
// them) and a stand-in for the one header reducer.hpp needs that Debian does not ship;
// see third_party/c10d-compat and the top CMakeLists.txt.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include "patchwise/base/error.h"

namespace patchwise {
namespace {

using Clock = std::chrono::steady_clock;

/// DDP's defaults (torch/nn/parallel/distributed.py): a small first bucket so the first
/// allreduce starts early in the backward pass, 25 MB for the others.
constexpr size_t kFirstBucketBytes = 1024 * 1024;
constexpr size_t kBucketBytes = 25 * 1024 * 1024;
/// Largest chunk of one coalesced broadcast.
constexpr size_t kBroadcastBytes = 250u << 20;
/// Store key every rank adds 1 to when it arrives.
constexpr char kJoinedKey[] = "patchwise/joined";

int64_t parse_env_int(
    const char* name, const char* text, int64_t low, int64_t high, const std::string& expected) {
  const std::string value = text == nullptr ? "" : text;
  int64_t n = 0;
  const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), n);
  check_input(text != nullptr, "{}: unset, expected {}", name, expected);
  check_input(
      !value.empty() && error == std::errc() && end == value.data() + value.size() && n >= low &&
          n <= high,
      "{}: '{}', expected {}",
      name,
      value,
      expected);
  return n;
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

/// The first line of an exception's text, without Gloo's "[file.cc:123] " prefix.
std::string reason(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  if (!line.empty() && line[0] == '[') {
    const size_t close = line.find("] ");
    if (close != std::string::npos) line = line.substr(close + 2);
  }
  return line.empty() ? "no details" : line;
}

std::string exception_reason(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    return reason(c10_error->what_without_backtrace());
  }
  return reason(e.what());
}

/// Where the objects of a group whose peer failed go: their teardown can block on the
/// dead peer or throw, and the process is about to exit, so they are never destroyed;
/// held from a global, they stay reachable and leak checkers do not report them.
struct Graveyard {
  std::vector<c10::intrusive_ptr<c10d::Store>> stores;
  std::vector<c10::intrusive_ptr<c10d::ProcessGroupGloo>> groups;
  std::vector<std::unique_ptr<c10d::Reducer>> reducers;
};
Graveyard& graveyard() {
  static auto* g = new Graveyard;
  return *g;
}

}  // namespace

DistributedConfig distributed_config_from_env(
    const std::function<const char*(const char*)>& getenv_function) {
  auto get = [&](const char* name) -> const char* {
    return getenv_function ? getenv_function(name) : std::getenv(name);
  };
  DistributedConfig c;
  const char* world = get("WORLD_SIZE");
  if (world == nullptr || std::string(world) == "1") return c;
  c.world_size = parse_env_int("WORLD_SIZE", world, 1, 1 << 20, "a positive number of processes");
  const std::string ranks = fmt::format("0..{} (WORLD_SIZE is {})", c.world_size - 1, c.world_size);
  c.rank = parse_env_int("RANK", get("RANK"), 0, c.world_size - 1, ranks);
  if (get("LOCAL_WORLD_SIZE") != nullptr) {
    c.local_world_size = parse_env_int(
        "LOCAL_WORLD_SIZE",
        get("LOCAL_WORLD_SIZE"),
        1,
        c.world_size,
        fmt::format("1..{}", c.world_size));
  }
  if (get("LOCAL_RANK") != nullptr) {
    c.local_rank = parse_env_int(
        "LOCAL_RANK",
        get("LOCAL_RANK"),
        0,
        c.local_world_size - 1,
        fmt::format("0..{} (LOCAL_WORLD_SIZE is {})", c.local_world_size - 1, c.local_world_size));
  }
  const char* addr = get("MASTER_ADDR");
  check_input(
      addr != nullptr && *addr != '\0',
      "MASTER_ADDR: unset, expected the host of rank 0 (e.g. 127.0.0.1) when WORLD_SIZE is {}",
      c.world_size);
  c.master_addr = addr;
  c.master_port = parse_env_int("MASTER_PORT", get("MASTER_PORT"), 1, 65535, "a port 1..65535");
  const char* agent = get("TORCHELASTIC_USE_AGENT_STORE");
  c.agent_store = agent != nullptr && std::string(agent) == "True";
  if (const char* restarts = get("TORCHELASTIC_RESTART_COUNT")) c.restart_count = restarts;
  if (const char* ifname = get("GLOO_SOCKET_IFNAME")) c.socket_ifname = ifname;
  return c;
}

struct Distributed::Impl {
  DistributedConfig config;
  std::chrono::milliseconds timeout{0};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  std::unique_ptr<c10d::Reducer> reducer;
  int64_t buckets = 0;
  bool find_unused = false;
  bool failed = false;  ///< a peer failed: the group is unusable and is not torn down

  std::string where() const { return fmt::format("{}:{}", config.master_addr, config.master_port); }

  [[noreturn]] void fail(const std::string& message) {
    failed = true;
    throw DistributedError(
        "distributed training: rank " + std::to_string(config.rank) + " " + message);
  }

  void connect_store() {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(config.master_port);
    o.isServer = config.rank == 0 && !config.agent_store;
    o.numWorkers = static_cast<size_t>(config.world_size);
    // waitWorkers would block the server's constructor and, in 1.13, return silently on a
    // timeout; the explicit check-in below gives a clear error instead.
    o.waitWorkers = false;
    o.timeout = timeout;
    try {
      store = c10::make_intrusive<c10d::TCPStore>(config.master_addr, o);
    } catch (const std::exception& e) {
      fail(fmt::format(
          "could not {} the rendezvous store at {} within {} s ({})",
          o.isServer ? "host" : "reach",
          where(),
          config.timeout_seconds,
          exception_reason(e)));
    }
    if (config.agent_store) {
      // As torch.distributed does under torchrun: each restart gets its own keys.
      store =
          c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + config.restart_count, store);
    }
  }

  void check_in() {
    const auto deadline = Clock::now() + timeout;
    int64_t joined = 0;
    try {
      store->add(kJoinedKey, 1);
      for (;;) {
        joined = store->add(kJoinedKey, 0);
        if (joined >= config.world_size) return;
        if (Clock::now() > deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    } catch (const std::exception& e) {
      fail(fmt::format("lost the rendezvous store at {} ({})", where(), exception_reason(e)));
    }
    fail(fmt::format(
        "timed out at the rendezvous: only {} of {} ranks joined at {} within {} s "
        "(--dist-timeout)",
        joined,
        config.world_size,
        where(),
        config.timeout_seconds));
  }

  void connect_group() {
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    if (!config.socket_ifname.empty()) {
      options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(config.socket_ifname));
    } else if (is_loopback(config.master_addr)) {
      // Every rank is on this machine: stay on loopback whatever the hostname resolves to.
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    options->threads = 2;  // torch.distributed's default for Gloo
    try {
      group = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::make_intrusive<c10d::PrefixStore>("default_pg/", store),
          static_cast<int>(config.rank),
          static_cast<int>(config.world_size),
          options);
    } catch (const std::exception& e) {
      fail(fmt::format(
          "could not connect to the other ranks within {} s ({})",
          config.timeout_seconds,
          exception_reason(e)));
    }
  }
};

Distributed::Distributed(const DistributedConfig& config) : impl_(std::make_unique<Impl>()) {
  // c10d logs each failed connection attempt and timeout through glog, on top of the
  // one line DistributedError gives; keep its own logging to fatal errors.
  FLAGS_minloglevel = std::max(FLAGS_minloglevel, static_cast<int32_t>(google::GLOG_FATAL));
  // A peer that dies closes its sockets, and a write to them would end this process
  // with SIGPIPE (seen: rank 0 killed by signal 13 in distributed_test) before the
  // one-line DistributedError; ignored, as serve does, the write fails with EPIPE and
  // c10d reports it as an error.
  std::signal(SIGPIPE, SIG_IGN);
  impl_->config = config;
  impl_->timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_seconds * 1000));
  impl_->connect_store();
  impl_->check_in();
  impl_->connect_group();
}

Distributed::~Distributed() {
  if (impl_->failed) {
    // After a peer failure the Reducer and the group hold half-finished work.
    graveyard().reducers.push_back(std::move(impl_->reducer));
    graveyard().groups.push_back(std::move(impl_->group));
    graveyard().stores.push_back(std::move(impl_->store));
  }
}

int64_t Distributed::rank() const { return impl_->config.rank; }
int64_t Distributed::world_size() const { return impl_->config.world_size; }
const DistributedConfig& Distributed::config() const { return impl_->config; }
int64_t Distributed::buckets() const { return impl_->buckets; }

void Distributed::guard(const std::string& doing, const std::function<void()>& work) {
  try {
    work();
  } catch (const DistributedError&) {
    throw;
  } catch (const InputError&) {
    throw;
  } catch (const std::exception& e) {
    // A dead peer surfaces as gloo::IoException (a std::runtime_error, not a c10::Error)
    // from the collective or from backward(); a hung one as a timeout.
    impl_->fail(fmt::format("lost its peers during {} ({})", doing, exception_reason(e)));
  }
}

void Distributed::broadcast(const std::vector<at::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> views;
  for (const auto& t : tensors) views.push_back(t.detach());
  guard("the broadcast of rank 0's weights", [&] {
    c10d::broadcast_coalesced(impl_->group, views, kBroadcastBytes, 0);
  });
}

void Distributed::allreduce_sum(at::Tensor& values, const std::string& doing) {
  std::vector<at::Tensor> list{values};
  guard(doing, [&] { impl_->group->allreduce(list)->wait(); });
}

int64_t Distributed::allreduce_max(int64_t value, const std::string& doing) {
  std::vector<at::Tensor> list{torch::full({1}, value, torch::kInt64)};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::MAX;
  guard(doing, [&] { impl_->group->allreduce(list, options)->wait(); });
  return list[0].item<int64_t>();
}

void Distributed::barrier() {
  guard("the final barrier", [&] { impl_->group->barrier()->wait(); });
}

void Distributed::attach_gradients(
    const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names,
    bool find_unused) {
  // As torch.nn.parallel.DistributedDataParallel (1.13) sets its Reducer up.
  std::vector<bool> expect_sparse(parameters.size(), false);
  guard("the check that every rank has the same parameters", [&] {
    c10d::verify_params_across_processes(impl_->group, parameters, c10::nullopt);
  });
  auto [bucket_indices, bucket_limits] = c10d::compute_bucket_assignment_by_size(
      parameters, {kFirstBucketBytes, kBucketBytes}, expect_sparse);
  // Gradients arrive roughly in reverse order of the parameters.
  std::reverse(bucket_indices.begin(), bucket_indices.end());
  std::reverse(bucket_limits.begin(), bucket_limits.end());
  std::unordered_map<size_t, std::string> param_names;
  for (size_t i = 0; i < names.size(); ++i) param_names[i] = names[i];
  impl_->buckets = static_cast<int64_t>(bucket_indices.size());
  impl_->find_unused = find_unused;
  impl_->reducer = std::make_unique<c10d::Reducer>(
      parameters,
      bucket_indices,
      bucket_limits,
      impl_->group,
      expect_sparse,
      static_cast<int64_t>(kBucketBytes),
      find_unused,
      /*gradient_as_bucket_view=*/false,
      param_names,
      static_cast<int64_t>(kFirstBucketBytes));
}

void Distributed::before_forward() {
  if (!impl_->reducer) return;
  // DDP.forward: the first call after step 1 re-orders the buckets by the order the
  // gradients really arrived in (a broadcast from rank 0); later calls do nothing.
  guard("the rebuild of the gradient buckets", [&] {
    impl_->reducer->rebuild_buckets();
    impl_->reducer->prepare_for_forward();
  });
}

void Distributed::before_backward(const at::Tensor& loss) {
  if (!impl_->reducer) return;
  impl_->reducer->prepare_for_backward(
      impl_->find_unused ? std::vector<at::Tensor>{loss} : std::vector<at::Tensor>{});
}

double Distributed::time_allreduce(int64_t floats, int repeats) {
  std::vector<at::Tensor> list{torch::ones({std::max<int64_t>(floats, 1)})};
  std::vector<double> ms;
  guard("an allreduce", [&] {
    impl_->group->allreduce(list)->wait();  // warm-up
    for (int i = 0; i < repeats; ++i) {
      const auto start = Clock::now();
      impl_->group->allreduce(list)->wait();
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    }
  });
  if (ms.empty()) return 0;
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace patchwise
