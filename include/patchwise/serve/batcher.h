#pragma once
// Dynamic batching: requests submitted from many threads are gathered into one call of
// `run`, up to max_batch of them or until the oldest has waited max_delay, whichever
// comes first. Each caller gets the result at its own position through a future; an
// exception thrown by `run` reaches every caller of that batch. One worker thread calls
// `run`, so the model behind it sees one batch at a time.
//
// Beyond max_queue waiting requests submit() refuses (the server answers 503), and
// drain() stops taking requests, answers every queued one and joins the worker.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace patchwise {

struct BatcherOptions {
  int64_t max_batch = 16;     ///< most requests in one call of run
  double max_delay_ms = 0.0;  ///< longest the oldest waiting request waits for others; with 0
                              ///< the requests that arrive during a forward pass share the next
  int64_t max_queue = 256;    ///< most requests waiting; beyond it submit() refuses
};

template <class In, class Out>
class Batcher {
 public:
  /// Called with 1..max_batch requests; returns one result per request, in order.
  using Run = std::function<std::vector<Out>(std::vector<In>&)>;
  /// Called after each batch with its size (metrics).
  using Observe = std::function<void(size_t)>;

  Batcher(BatcherOptions options, Run run, Observe observe = {})
      : options_(options), run_(std::move(run)), observe_(std::move(observe)) {
    if (options_.max_batch < 1 || options_.max_queue < 1 || !(options_.max_delay_ms >= 0)) {
      throw std::invalid_argument("Batcher: max_batch and max_queue >= 1, max_delay_ms >= 0");
    }
    worker_ = std::thread([this] { work(); });
  }
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;
  ~Batcher() { drain(); }

  /// The request's future, or nothing when max_queue requests already wait or the
  /// batcher is draining.
  std::optional<std::future<Out>> submit(In in) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (stopping_ || static_cast<int64_t>(queue_.size()) >= options_.max_queue) return {};
    queue_.push_back(Item{std::move(in), {}, Clock::now()});
    std::future<Out> future = queue_.back().promise.get_future();
    lock.unlock();
    wake_.notify_one();
    return future;
  }

  /// Stops taking requests, answers every queued one, joins the worker. Idempotent.
  void drain() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  int64_t queue_depth() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(queue_.size());
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Item {
    In in;
    std::promise<Out> promise;
    Clock::time_point arrived;
  };

  /// The next batch: waits for a first request, then for max_batch of them or until
  /// the first has waited max_delay. Empty once draining with nothing queued.
  std::vector<Item> next_batch() {
    std::unique_lock<std::mutex> lock(mutex_);
    wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return {};
    const auto delay = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double, std::milli>(options_.max_delay_ms));
    const auto full = [&] {
      return stopping_ || static_cast<int64_t>(queue_.size()) >= options_.max_batch;
    };
    wake_.wait_until(lock, queue_.front().arrived + delay, full);
    const auto n = std::min<size_t>(queue_.size(), static_cast<size_t>(options_.max_batch));
    std::vector<Item> batch;
    batch.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    return batch;
  }

  void answer(std::vector<Item>& batch) {
    std::vector<In> inputs;
    inputs.reserve(batch.size());
    for (Item& item : batch) inputs.push_back(std::move(item.in));
    try {
      std::vector<Out> outputs = run_(inputs);
      if (observe_) observe_(batch.size());  // before any caller can look at the metrics
      if (outputs.size() != batch.size()) {
        throw std::logic_error("Batcher: run returned a result count other than its inputs'");
      }
      for (size_t i = 0; i < batch.size(); ++i) batch[i].promise.set_value(std::move(outputs[i]));
    } catch (...) {
      for (Item& item : batch) item.promise.set_exception(std::current_exception());
    }
  }

  void work() {
    for (;;) {
      std::vector<Item> batch = next_batch();
      if (batch.empty()) return;
      answer(batch);
    }
  }

  BatcherOptions options_;
  Run run_;
  Observe observe_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Item> queue_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace patchwise
