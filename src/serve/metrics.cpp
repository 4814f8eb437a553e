#include "patchwise/serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace patchwise {
namespace {

constexpr auto kRateWindow = std::chrono::seconds(10);

std::string bound_text(double bound) { return fmt::format("{}", bound); }

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const auto at = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++counts_[static_cast<size_t>(at)];
  sum_ += value;
  max_ = count_ == 0 ? value : std::max(max_, value);
  ++count_;
}

std::string Histogram::render(const std::string& name) const {
  std::string out;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bound_text(bounds_[i]), cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  out += fmt::format("{}_sum {}\n{}_count {}\n", name, sum_, name, count_);
  return out;
}

ServeMetrics::ServeMetrics()
    : latency_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}),
      batch_size_({1, 2, 4, 8, 16, 32, 64, 128, 256}) {}

void ServeMetrics::request(const std::string& path, int status, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{path, status}];
  latency_.observe(seconds);
}

void ServeMetrics::batch(size_t images) {
  std::lock_guard<std::mutex> lock(mutex_);
  batch_size_.observe(static_cast<double>(images));
  images_ += images;
  const auto now = Clock::now();
  recent_.emplace_back(now, images);
  while (!recent_.empty() && now - recent_.front().first > kRateWindow) recent_.pop_front();
}

double ServeMetrics::images_per_second(Clock::time_point now) const {
  size_t images = 0;
  for (const auto& [when, n] : recent_) {
    if (now - when <= kRateWindow) images += n;
  }
  return static_cast<double>(images) / std::chrono::duration<double>(kRateWindow).count();
}

std::string ServeMetrics::render(int64_t queue_depth, const ConnectionCounts& connections) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out =
      "# HELP patchwise_requests_total HTTP requests answered, by path and status.\n"
      "# TYPE patchwise_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    out += fmt::format(
        "patchwise_requests_total{{path=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, n);
  }
  out +=
      "# HELP patchwise_request_seconds Seconds from a request's headers to its answer, ready to "
      "send.\n"
      "# TYPE patchwise_request_seconds histogram\n";
  out += latency_.render("patchwise_request_seconds");
  out +=
      "# HELP patchwise_batch_size Images in each forward pass.\n"
      "# TYPE patchwise_batch_size histogram\n";
  out += batch_size_.render("patchwise_batch_size");
  out += fmt::format(
      "# HELP patchwise_queue_depth Requests waiting for a forward pass.\n"
      "# TYPE patchwise_queue_depth gauge\npatchwise_queue_depth {}\n"
      "# HELP patchwise_images_total Images answered.\n"
      "# TYPE patchwise_images_total counter\npatchwise_images_total {}\n"
      "# HELP patchwise_images_per_second Images answered per second over the last 10 s.\n"
      "# TYPE patchwise_images_per_second gauge\npatchwise_images_per_second {}\n"
      "# HELP patchwise_connections_open Connections open now.\n"
      "# TYPE patchwise_connections_open gauge\npatchwise_connections_open {}\n"
      "# HELP patchwise_connections_closed_total Connections closed by the server before "
      "the client, by reason.\n"
      "# TYPE patchwise_connections_closed_total counter\n"
      "patchwise_connections_closed_total{{reason=\"max-connections\"}} {}\n"
      "patchwise_connections_closed_total{{reason=\"deadline\"}} {}\n"
      "patchwise_connections_closed_total{{reason=\"idle-while-crowded\"}} {}\n",
      queue_depth,
      images_,
      images_per_second(Clock::now()),
      connections.open.load(),
      connections.refused.load(),
      connections.timed_out.load(),
      connections.closed_idle.load());
  return out;
}

std::pair<size_t, uint64_t> ServeMetrics::batches() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {static_cast<size_t>(batch_size_.max()), batch_size_.count()};
}

}  // namespace patchwise
