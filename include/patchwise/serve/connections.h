#pragma once
// How the server holds its connections (src/serve/connections.cpp): a thread for each open
// connection up to a cap, and deadlines of their own for reading a request, so that a few
// slow or idle clients never hold what the others need. Beyond the cap a connection is
// answered 503 with Retry-After at once and closed.

#include <atomic>
#include <cstdint>
#include <string>

namespace patchwise {

struct ConnectionLimits {
  int max_connections = 256;     ///< open at once (each has a thread); the next gets 503
  double header_timeout_s = 10;  ///< a request's line and headers arrive within this
  double min_body_rate = 16384;  ///< bytes a second a request keeps up beyond that
  double idle_timeout_s = 5;     ///< a kept-alive connection waits this long for a request
};

/// A connection that has been idle this long is closed as soon as three quarters of
/// max_connections are open (a kept-alive one between requests at once).
constexpr double kCrowdedGraceS = 1.0;

/// What became of connections, for /metrics; read and written from any thread.
struct ConnectionCounts {
  std::atomic<int64_t> open{0};
  std::atomic<uint64_t> refused{0};      ///< beyond max_connections: 503, closed
  std::atomic<uint64_t> timed_out{0};    ///< a request not in by its deadline: closed
  std::atomic<uint64_t> closed_idle{0};  ///< idle while the server was crowded: closed
};

/// True while the current thread handles a request whose reading ran past its deadline
/// (header_timeout_s, min_body_rate): the server answers it 408 and closes.
bool request_timed_out();
/// Closes the connection after the answer being written on this thread: for a request
/// whose body was not read to its end, where what follows could be the rest of that body
/// and must never be parsed as requests (request smuggling).
void close_after_answer();

/// The one line a request cut by its deadline is answered with (408).
std::string late_request_message(const ConnectionLimits& limits);

}  // namespace patchwise
