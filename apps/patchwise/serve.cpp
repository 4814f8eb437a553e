// patchwise serve: a model behind an HTTP API (serve/server.h). SIGTERM and SIGINT
// drain (no new requests; the ones taken are answered; exit 0); SIGHUP reloads --model
// from its file, keeping the current model when the new file does not load.

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <thread>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/runtime.h"
#include "patchwise/serve/server.h"

namespace patchwise::cli {
namespace {

struct ServeFlags {
  std::string model;
  ServeOptions server;
  double max_upload_mib = 64;
  RuntimeFlags runtime;
};

/// The write end of the pipe the signal handler reports on (a handler may only write).
int g_signal_pipe = -1;

void on_signal(int sig) {
  const auto byte = static_cast<char>(sig);
  [[maybe_unused]] const ssize_t n = ::write(g_signal_pipe, &byte, 1);
}

/// Reads the signals reported on `fd` and acts on each; a 0 byte ends it.
void handle_signals(ModelServer& server, const std::string& model, int fd) {
  for (char sig = 0; ::read(fd, &sig, 1) == 1 && sig != 0;) {
    if (sig == SIGHUP) {
      try {
        server.reload(model);
        fmt::print(stderr, "serve: reloaded {}\n", model);
      } catch (const std::exception& e) {
        fmt::print(stderr, "serve: reload failed, the current model stays: {}\n", e.what());
      }
      continue;
    }
    fmt::print(
        stderr,
        "serve: {}: answering the requests taken, then exiting\n",
        sig == SIGTERM ? "SIGTERM" : "SIGINT");
    server.stop();
  }
}

/// Handlers for SIGTERM, SIGINT and SIGHUP that report on a pipe; returns its read end.
/// (Blocking them instead cannot work: OpenBLAS starts threads before main.)
int report_signals() {
  int fds[2];
  check_input(::pipe(fds) == 0, "serve: cannot create a pipe for signals");
  g_signal_pipe = fds[1];
  struct sigaction action = {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) ::sigaction(sig, &action, nullptr);
  return fds[0];
}

void run_serve(const ServeFlags& f) {
  apply_runtime_flags(f.runtime);
  ServeOptions options = f.server;
  options.device = f.runtime.device;
  options.precision = runtime_precision(f.runtime, resolve_device(f.runtime.device));
  options.max_upload = static_cast<int64_t>(f.max_upload_mib * 1024 * 1024);
  ModelServer server(f.model, options);
  const int port = server.bind();
  const int fd = report_signals();
  fmt::print(
      stderr,
      "serve: {} on http://{}:{}/ (max batch {}, max delay {} ms)\n",
      f.model,
      options.host,
      port,
      options.batching.max_batch,
      options.batching.max_delay_ms);
  std::thread signals([&] { handle_signals(server, f.model, fd); });
  server.serve();
  on_signal(0);  // ends the signal thread
  signals.join();
  fmt::print(stderr, "serve: stopped\n");
}

/// How connections are held (serve/connections.h). httplib 0.11 watches sockets with
/// select(), which takes descriptors below 1024: hence the cap's bound.
void add_connection_flags(CLI::App* cmd, ConnectionLimits& c) {
  cmd->add_option(
         "--max-connections,--http-threads",
         c.max_connections,
         "connections open at once, each with a thread; the next is answered 503")
      ->check(CLI::Range(1, 900));
  cmd->add_option(
         "--header-timeout", c.header_timeout_s, "seconds a request's line and headers may take")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option(
         "--min-body-rate",
         c.min_body_rate,
         "bytes a second a request must keep up after --header-timeout (else 408)")
      ->check(CLI::Range(1.0, 1e12));
  cmd->add_option(
         "--idle-timeout",
         c.idle_timeout_s,
         "seconds a kept-alive connection waits for its next request")
      ->check(CLI::Range(0.0, 3600.0));
}

}  // namespace

void setup_serve(CLI::App& app) {
  auto f = std::make_shared<ServeFlags>();
  CLI::App* cmd = app.add_subcommand("serve", "serve a model over HTTP (API, metrics, web page)");
  cmd->add_option("--model,-m", f->model, "model file written by train")->required();
  cmd->add_option("--host", f->server.host, "address to listen on (0.0.0.0: every interface)");
  cmd->add_option("--port", f->server.port, "TCP port; 0: any free one (printed)")
      ->check(CLI::Range(0, 65535));
  add_connection_flags(cmd, f->server.connections);
  cmd->add_option("--max-batch", f->server.batching.max_batch, "most images in one forward pass")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd->add_option(
         "--max-delay-ms",
         f->server.batching.max_delay_ms,
         "longest a request waits for others to share its forward pass")
      ->check(CLI::Range(0.0, 10000.0));
  cmd->add_option(
         "--max-queue",
         f->server.batching.max_queue,
         "requests waiting for a forward pass beyond which new ones get 503")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--max-upload", f->max_upload_mib, "largest request body in MiB (else 413)")
      ->check(CLI::Range(0.001, 65536.0));
  cmd->add_option(
         "--timeout",
         f->server.timeout_s,
         "seconds one write of an answer, or the wait for an answer, may take")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option(
         "--token", f->server.token, "require 'Authorization: Bearer TOKEN' on /v1/ and /metrics")
      ->envname("PATCHWISE_TOKEN");

  cmd->add_option("--top", f->server.top, "tiled models: the tiles listed, best first")
      ->check(CLI::PositiveNumber);
  add_reader_flags(cmd, f->server.reader);
  add_runtime_flags(cmd, f->runtime);
  cmd->callback([f] { run_serve(*f); });
}

}  // namespace patchwise::cli
