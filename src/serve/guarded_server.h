#pragma once
// httplib's server with its own loop over a connection's requests (private to src/serve/).
// cpp-httplib 0.11 gives each accepted connection a thread of a fixed pool for as long as
// the client keeps it, and bounds only each single read: a client sending a byte a second,
// or a few hundred that connect and say nothing, hold every thread. Here each connection
// gets a thread of its own up to ConnectionLimits::max_connections (the excess is answered
// 503 on the accepting thread), and reading a request runs against a deadline.

#include <httplib.h>

#include "patchwise/serve/connections.h"

namespace patchwise {

/// The one-line JSON body of every refusal, the server's and the connection loop's.
std::string error_body(const std::string& message);

class GuardedServer : public httplib::Server {
 public:
  /// `write_timeout_s`: the longest one write of an answer may wait for the client.
  GuardedServer(ConnectionLimits limits, double write_timeout_s);
  const ConnectionCounts& counts() const { return counts_; }
  /// After a bind: a listen backlog of SOMAXCONN rather than httplib's 5, so that a burst
  /// of connections is not dropped into the clients' SYN retries (a second or more).
  void widen_backlog();

 private:
  class Stream;
  bool process_and_close_socket(socket_t sock) override;
  bool wait_for_request(Stream& stream, bool first);
  bool crowded() const;
  void answer_late_request(Stream& stream);

  ConnectionLimits limits_;
  double write_timeout_s_;
  ConnectionCounts counts_;
};

}  // namespace patchwise
