#pragma once
// The server's counters in Prometheus' text format (version 0.0.4): requests by path and
// status, request latency and batch size histograms, queue depth, images answered and
// their rate over the last ten seconds. Every method may be called from any thread.

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "patchwise/serve/connections.h"

namespace patchwise {

/// Cumulative buckets with upper bounds `bounds` (ascending), plus +Inf.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  /// The _bucket, _sum and _count lines of metric `name`.
  std::string render(const std::string& name) const;
  uint64_t count() const { return count_; }
  /// The largest value observed (0 before the first).
  double max() const { return max_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  ///< per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  double max_ = 0;
  uint64_t count_ = 0;
};

class ServeMetrics {
 public:
  ServeMetrics();
  void request(const std::string& path, int status, double seconds);
  /// A forward pass over `images` requests.
  void batch(size_t images);
  /// The whole exposition; `queue_depth` and `connections` are read at that moment.
  std::string render(int64_t queue_depth, const ConnectionCounts& connections) const;
  /// The largest batch so far and the number of batches (tests, logs).
  std::pair<size_t, uint64_t> batches() const;

 private:
  using Clock = std::chrono::steady_clock;
  double images_per_second(Clock::time_point now) const;

  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  Histogram latency_;
  Histogram batch_size_;
  uint64_t images_ = 0;
  std::deque<std::pair<Clock::time_point, size_t>> recent_;  ///< batches of the last 10 s
};

}  // namespace patchwise
