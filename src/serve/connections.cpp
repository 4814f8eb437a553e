#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "guarded_server.h"
#include "patchwise/base/json_text.h"

namespace patchwise {
namespace {

using Clock = std::chrono::steady_clock;

thread_local bool t_over_capacity = false;
thread_local bool t_timed_out = false;
thread_local bool t_close_after = false;

/// Threads that never exceed the open connections, each open connection with one: a
/// connection beyond `max` is handed back to the accepting thread with t_over_capacity set,
/// for the server to answer 503 there. Idle threads wait for the next connection.
class ConnectionQueue : public httplib::TaskQueue {
 public:
  ConnectionQueue(int max, ConnectionCounts& counts) : max_(max), counts_(counts) {}
  ~ConnectionQueue() override = default;

  void enqueue(std::function<void()> fn) override {
    if (counts_.open.load() >= max_) {
      t_over_capacity = true;
      fn();
      t_over_capacity = false;
      return;
    }
    ++counts_.open;
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(fn));
    if (idle_ < jobs_.size() && threads_.size() < static_cast<size_t>(max_)) {
      threads_.emplace_back([this] { work(); });
    }
    ready_.notify_one();
  }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

 private:
  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      ++idle_;
      ready_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;
      std::function<void()> fn = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      fn();
      --counts_.open;
      lock.lock();
    }
  }

  const int max_;
  ConnectionCounts& counts_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// poll() for `events` for at most `seconds`, rounded up to a millisecond (0 or less: a
/// look without waiting): poll's answer, >0 ready (or closed, or failed), 0 not yet.
int poll_for(int sock, short events, double seconds) {
  pollfd p{sock, events, 0};
  const int ms = static_cast<int>(std::ceil(std::clamp(seconds * 1000.0, 0.0, 3.6e6)));
  int n;
  do {
    n = ::poll(&p, 1, ms);
  } while (n < 0 && errno == EINTR);
  return n;
}

bool ready_within(int sock, short events, double seconds) {
  return poll_for(sock, events, seconds) > 0;
}

void ip_and_port(const sockaddr_storage& address, socklen_t length, std::string& ip, int& port) {
  char host[NI_MAXHOST];
  char service[NI_MAXSERV];
  if (::getnameinfo(
          reinterpret_cast<const sockaddr*>(&address),
          length,
          host,
          sizeof(host),
          service,
          sizeof(service),
          NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(service);
  }
}

/// A whole answer with a one-line JSON error, for the refusals made outside httplib.
std::string canned_answer(const std::string& status, const std::string& message) {
  const std::string body = error_body(message);
  return fmt::format(
      "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
      "Connection: close\r\n{}\r\n{}",
      status,
      body.size(),
      status.rfind("503", 0) == 0 ? "Retry-After: 1\r\n" : "",
      body);
}

/// The answer to a connection beyond the cap, written without waiting on the accepting
/// thread; what the client already sent is read off first, so that the close does not
/// turn into a reset that loses the answer.
void refuse_connection(int sock, int max_connections) {
  const std::string answer = canned_answer(
      "503 Service Unavailable",
      fmt::format("{} connections already open (--max-connections); retry later", max_connections));
  char scratch[4096];
  for (int i = 0; i < 16 && ::recv(sock, scratch, sizeof(scratch), MSG_DONTWAIT) > 0; ++i) {
  }
  ::send(sock, answer.data(), answer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  ::shutdown(sock, SHUT_WR);
  ::close(sock);
}

}  // namespace

std::string error_body(const std::string& message) {
  return json_text(nlohmann::json{{"error", message}}) + "\n";
}

bool request_timed_out() { return t_timed_out; }

void close_after_answer() { t_close_after = true; }

std::string late_request_message(const ConnectionLimits& limits) {
  return fmt::format(
      "the request did not arrive in time: its headers within {} s (--header-timeout) and "
      "then at least {} bytes a second (--min-body-rate)",
      limits.header_timeout_s,
      limits.min_body_rate);
}

/// One connection's reads and writes. A request must be read by its deadline: its start
/// plus header_timeout_s plus a second for every min_body_rate bytes read so far; a read
/// past it fails (t_timed_out), which ends the request and the connection. Bytes read
/// past the end of a request are kept for the next one (pipelining).
class GuardedServer::Stream : public httplib::Stream {
 public:
  Stream(int sock, const ConnectionLimits& limits, double write_timeout_s)
      : sock_(sock), limits_(limits), write_timeout_s_(write_timeout_s), buffer_(16384) {}

  void begin_request(Clock::time_point start) {
    start_ = start;
    read_ = 0;
    written_ = 0;
    t_timed_out = false;
  }
  bool buffered() const { return begin_ < end_; }
  int fd() const { return sock_; }
  size_t bytes_read() const { return read_; }
  size_t bytes_written() const { return written_; }

  bool is_readable() const override { return buffered() || wait_readable(); }
  bool is_writable() const override { return ready_within(sock_, POLLOUT, write_timeout_s_); }

  ssize_t read(char* ptr, size_t size) override {
    if (!buffered()) {
      if (!wait_readable()) return -1;
      const ssize_t n = ::recv(sock_, buffer_.data(), buffer_.size(), 0);
      if (n <= 0) return n;
      begin_ = 0;
      end_ = static_cast<size_t>(n);
    }
    const size_t n = std::min(size, end_ - begin_);
    std::memcpy(ptr, buffer_.data() + begin_, n);
    begin_ += n;
    read_ += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    const ssize_t n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
    if (n > 0) written_ += static_cast<size_t>(n);
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    if (::getpeername(sock_, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
      ip_and_port(address, length, ip, port);
    }
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    if (::getsockname(sock_, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
      ip_and_port(address, length, ip, port);
    }
  }
  socket_t socket() const override { return sock_; }

 private:
  /// Waits for bytes until the request's deadline; past it, t_timed_out.
  bool wait_readable() const {
    for (;;) {
      const double left = seconds_left();
      if (left <= 0) {
        t_timed_out = true;
        return false;
      }
      const int n = poll_for(sock_, POLLIN, left);
      if (n != 0) return n > 0;
    }
  }
  double seconds_left() const {
    const double allowed =
        limits_.header_timeout_s + static_cast<double>(read_) / limits_.min_body_rate;
    return allowed - seconds_since(start_);
  }

  int sock_;
  const ConnectionLimits& limits_;
  double write_timeout_s_;
  std::vector<char> buffer_;
  size_t begin_ = 0;
  size_t end_ = 0;
  Clock::time_point start_ = Clock::now();
  size_t read_ = 0;
  size_t written_ = 0;
};

GuardedServer::GuardedServer(ConnectionLimits limits, double write_timeout_s)
    : limits_(limits), write_timeout_s_(write_timeout_s) {
  new_task_queue = [this] { return new ConnectionQueue(limits_.max_connections, counts_); };
}

void GuardedServer::widen_backlog() {
  // Linux takes a second listen() on a listening socket as a new backlog.
  ::listen(svr_sock_, SOMAXCONN);
}

bool GuardedServer::crowded() const {
  return counts_.open.load() * 4 > static_cast<int64_t>(limits_.max_connections) * 3;
}

/// Waits for the first byte of the connection's next request: false when the connection
/// is to close instead (the server stops, the wait ran out, or it idled while crowded).
bool GuardedServer::wait_for_request(Stream& stream, bool first) {
  if (stream.buffered()) return true;
  const auto start = Clock::now();
  const double limit = first ? limits_.header_timeout_s : limits_.idle_timeout_s;
  const double grace = first ? kCrowdedGraceS : 0.0;
  for (;;) {
    if (svr_sock_ == INVALID_SOCKET) return false;
    const double waited = seconds_since(start);
    if (waited >= limit) {
      if (first) ++counts_.timed_out;
      return false;
    }
    if (waited >= grace && crowded()) {
      ++counts_.closed_idle;
      return false;
    }
    if (ready_within(stream.fd(), POLLIN, std::min(0.1, limit - waited))) return true;
  }
}

void GuardedServer::answer_late_request(Stream& stream) {
  const std::string answer = canned_answer("408 Request Timeout", late_request_message(limits_));
  stream.write(answer.data(), answer.size());
}

bool GuardedServer::process_and_close_socket(socket_t sock) {
  if (t_over_capacity) {
    ++counts_.refused;
    refuse_connection(sock, limits_.max_connections);
    return false;
  }
  const auto accepted = Clock::now();
  Stream stream(sock, limits_, write_timeout_s_);
  bool ok = true;
  for (size_t served = 0; ok && served < keep_alive_max_count_; ++served) {
    if (!wait_for_request(stream, served == 0)) break;
    stream.begin_request(served == 0 ? accepted : Clock::now());
    bool closed = false;
    t_close_after = false;
    ok = process_request(stream, served + 1 == keep_alive_max_count_, closed, nullptr);
    if (t_timed_out) {
      ++counts_.timed_out;
      // Cut before its request line was whole, httplib wrote nothing.
      if (stream.bytes_written() == 0 && stream.bytes_read() > 0) answer_late_request(stream);
      break;
    }
    if (closed || t_close_after) break;
  }
  t_timed_out = false;
  t_close_after = false;
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ok;
}

}  // namespace patchwise
