// patchwise serve's request handling (cpp-httplib's parser, then serve/server.cpp's
// routes, upload reading and image decoding) on arbitrary bytes sent as one
// connection's request stream. The server runs in this process, so a sanitizer sees
// every fault; an answer must be empty (the connection was dropped) or an HTTP status
// line, nothing may be answered after an answer that closes the connection (a request
// smuggled behind a refused body), and the server must keep answering its health probe.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include "fuzz_support.h"
#include "patchwise/model/model_file.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/serve/server.h"

namespace {

using namespace patchwise;

struct Served {
  std::unique_ptr<ModelServer> server;
  int port = 0;
  std::thread thread;
};

/// One server for the process, on a small random model.
Served& served() {
  static Served* s = [] {
    ModelConfig config;
    config.class_names = {"a", "b"};
    config.backbone.num_classes = 2;
    config.normalization = {{0.5}, {0.25}};
    PatchClassifier model(config);
    const std::string path = (fuzz::scratch_dir() / "model.pw").string();
    save_model(path, model, nullptr);
    ServeOptions options;
    options.port = 0;
    options.timeout_s = 2;
    options.connections.header_timeout_s = 2;
    options.max_upload = 1 << 20;
    options.batching.max_delay_ms = 0;
    auto* out = new Served;  // lives until exit: the server threads must outlive every input
    out->server = std::make_unique<ModelServer>(path, options);
    out->port = out->server->bind();
    out->thread = std::thread([out] { out->server->serve(); });
    out->thread.detach();
    return out;
  }();
  return *s;
}

/// The bytes `fd` receives until it closes or stays silent for `quiet_ms` (`first_ms`
/// before the first byte).
std::string receive(int fd, int first_ms, int quiet_ms) {
  std::string reply;
  char buffer[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, reply.empty() ? first_ms : quiet_ms) <= 0) break;
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    reply.append(buffer, static_cast<size_t>(n));
  }
  return reply;
}

/// Sends `request` on a new connection and returns what the server answers. The
/// sending side is not shut: cpp-httplib 0.11 drops the answer to a half-closed
/// connection, so the answer is read until the server goes quiet instead.
std::string exchange(int port, const char* request, size_t size, int first_ms = 300) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) std::abort();
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) std::abort();
  for (size_t sent = 0; sent < size;) {
    const ssize_t n = ::send(fd, request + sent, size - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may close early (a refused request)
    sent += static_cast<size_t>(n);
  }
  const std::string reply = receive(fd, first_ms, 20);
  ::close(fd);
  return reply;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static size_t inputs = 0;
  const int port = served().port;
  const std::string reply = exchange(port, reinterpret_cast<const char*>(data), size);
  if (!reply.empty() && reply.rfind("HTTP/1.1 ", 0) != 0) {
    std::fprintf(stderr, "request_fuzz: an answer that is not HTTP: %.80s\n", reply.c_str());
    std::abort();
  }
  // Every answer's body ends its line, so a later answer starts after a newline; the JSON
  // bodies escape the newlines of what they quote.
  const size_t closing = reply.find("Connection: close\r\n");
  if (closing != std::string::npos && reply.find("\nHTTP/1.1 ", closing) != std::string::npos) {
    std::fprintf(stderr, "request_fuzz: an answer after one that closed the connection\n");
    std::abort();
  }
  if (++inputs % 64 == 1) {
    const char probe[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    const std::string health = exchange(port, probe, sizeof(probe) - 1, 10000);
    if (health.rfind("HTTP/1.1 200", 0) != 0) {
      std::fprintf(
          stderr,
          "request_fuzz: the server stopped answering its health probe: %.80s\n",
          health.c_str());
      std::abort();
    }
  }
  return 0;
}
