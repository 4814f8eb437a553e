#include "patchwise/serve/server.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "patchwise/data/image.h"
#include "patchwise/model/bag_options.h"
#include "patchwise/model/model_file.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/report/prediction.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

PatchClassifier random_model(uint64_t seed) {
  return test::random_grid_model({"a", "b", "c"}, seed);
}

/// Random 28x28 grey images as PNG bytes, with their tensors.
struct Images {
  std::vector<at::Tensor> tensors;
  std::vector<std::string> png;
};
Images random_images(int n) {
  Images images;
  for (int i = 0; i < n; ++i) {
    images.tensors.push_back(torch::randint(0, 256, {1, 28, 28}, torch::kUInt8));
    images.png.push_back(encode_png(images.tensors.back()));
  }
  return images;
}

/// What the model itself says about `image`: the answer the server must give.
std::vector<double> expected_probabilities(PatchClassifier& model, const at::Tensor& image) {
  torch::InferenceMode guard;
  const PatchOutput out = model->forward(image.unsqueeze(0));
  return grid_prediction_json(*model, "x", out.patch_logits[0], out.log_probs[0])["probabilities"]
      .get<std::vector<double>>();
}

double max_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double d = a.size() == b.size() ? 0.0 : 1e9;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

/// The same image in a batch of another size, or on the server's own thread and thread
/// count, goes through float32 kernels that may block and split the sums differently. The
/// seed small-cnn's five layers sum 9, 144, 288, 256 and 64 products, each within that many
/// u = 2^-24 of their magnitudes (the 288 times 8 where Winograd serves): 2,800 u = 1.7e-4
/// of the logits' magnitudes, about 0.3 for this default initialisation (each layer shrinks
/// its input), so 5e-5 per pass and 1e-4 between two. A probability moves by at most half
/// its logits' largest change: under 5e-5. (The tiled model's layers add up to less.)
constexpr double kTolerance = 1e-4;

class ServerTest : public test::SeededTest {
 protected:
  // Two overloads rather than a default argument: GCC 12 warned that the defaulted
  // ServeOptions may be used uninitialized when the call was inlined (a false positive).
  void start() { start(ServeOptions{}); }
  void start(ServeOptions options) {
    model_ = random_model(7);
    save_model(path("m.pw"), model_, nullptr);
    options.port = 0;
    server_ = std::make_unique<ModelServer>(path("m.pw"), options);
    port_ = server_->bind();
    serving_ = std::thread([this] { server_->serve(); });
  }
  void TearDown() override {
    if (server_) server_->stop();
    if (serving_.joinable()) serving_.join();
    test::SeededTest::TearDown();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(30, 0);
    return c;
  }

  PatchClassifier model_{nullptr};
  std::unique_ptr<ModelServer> server_;
  std::thread serving_;
  int port_ = 0;
};

TEST_F(ServerTest, AnswersAsTheModelDoesFromARawBodyOrAForm) {
  start();
  const Images images = random_images(1);
  const std::vector<double> expected = expected_probabilities(model_, images.tensors[0]);
  auto c = client();
  auto raw = c.Post("/v1/predict", images.png[0], "image/png");
  ASSERT_TRUE(raw);
  ASSERT_EQ(raw->status, 200) << raw->body;
  const auto answer = nlohmann::json::parse(raw->body);
  EXPECT_LT(
      max_difference(answer["probabilities"].get<std::vector<double>>(), expected), kTolerance);
  EXPECT_EQ(answer["patches"].size(), 4u);
  EXPECT_EQ(answer["patches"][1]["x"], 10);
  EXPECT_EQ(answer["label"], answer["class"] == 0 ? "a" : answer["class"] == 1 ? "b" : "c");

  httplib::MultipartFormDataItems form = {{"image", images.png[0], "digit.png", "image/png"}};
  auto multipart = c.Post("/v1/predict", form);
  ASSERT_TRUE(multipart);
  ASSERT_EQ(multipart->status, 200) << multipart->body;
  const auto from_form = nlohmann::json::parse(multipart->body);
  EXPECT_EQ(from_form["file"], "digit.png");
  EXPECT_LT(
      max_difference(from_form["probabilities"].get<std::vector<double>>(), expected), kTolerance);
}

TEST_F(ServerTest, ConcurrentRequestsShareForwardPassesAndEachGetsItsOwnAnswer) {
  ServeOptions options;
  options.batching = {/*max_batch=*/16, /*max_delay_ms=*/50, /*max_queue=*/256};
  start(options);
  constexpr int kClients = 12, kEach = 4;
  const Images images = random_images(kClients);
  std::vector<std::vector<double>> expected;
  for (const auto& t : images.tensors) expected.push_back(expected_probabilities(model_, t));
  std::atomic<int> wrong{0}, failed{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      auto c = client();
      for (int r = 0; r < kEach; ++r) {
        auto res = c.Post("/v1/predict", images.png[static_cast<size_t>(i)], "image/png");
        if (!res || res->status != 200) {
          ++failed;
          continue;
        }
        const auto probs =
            nlohmann::json::parse(res->body)["probabilities"].get<std::vector<double>>();
        // Its own image's answer, and closer to it than to any other image's.
        int nearest = 0;
        for (int j = 1; j < kClients; ++j) {
          if (max_difference(probs, expected[static_cast<size_t>(j)]) <
              max_difference(probs, expected[static_cast<size_t>(nearest)])) {
            nearest = j;
          }
        }
        if (nearest != i || max_difference(probs, expected[static_cast<size_t>(i)]) > kTolerance) {
          ++wrong;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
  const auto [largest, passes] = server_->batches();
  EXPECT_GT(largest, 1u) << "12 concurrent clients never shared a forward pass";
  EXPECT_LT(passes, static_cast<uint64_t>(kClients * kEach));
}

TEST_F(ServerTest, RefusesWhatItCannotHandleWithTheRightStatus) {
  ServeOptions options;
  options.max_upload = 4096;
  start(options);
  auto c = client();
  const auto status = [](const httplib::Result& r) { return r ? r->status : -1; };
  const auto error = [](const httplib::Result& r) {
    return r ? nlohmann::json::parse(r->body).value("error", "") : std::string("no answer");
  };
  const std::string png = random_images(1).png[0];
  EXPECT_EQ(status(c.Get("/nowhere")), 404);
  auto wrong_method = c.Get("/v1/predict");
  EXPECT_EQ(status(wrong_method), 405);
  EXPECT_EQ(wrong_method->get_header_value("Allow"), "POST");
  EXPECT_EQ(status(c.Delete("/v1/model", "x", "text/plain")), 405);
  EXPECT_EQ(status(c.Post("/v1/predict", "{}", "application/json")), 415);
  auto garbage = c.Post("/v1/predict", "not an image", "application/octet-stream");
  EXPECT_EQ(status(garbage), 400);
  EXPECT_THAT(error(garbage), HasSubstr("not a PNG, JPEG"));
  EXPECT_EQ(status(c.Post("/v1/predict", "", "image/png")), 400);
  EXPECT_EQ(status(c.Post("/v1/predict", png.substr(0, png.size() / 2), "image/png")), 400);
  // A PNG header that declares 100,000 x 100,000 pixels: refused before any decoding.
  at::Tensor tiny = torch::zeros({1, 2, 2}, torch::kUInt8);
  std::string huge = encode_png(tiny);
  const unsigned char side[4] = {0x00, 0x01, 0x86, 0xa0};  // 100000, big-endian
  huge.replace(16, 4, reinterpret_cast<const char*>(side), 4);
  huge.replace(20, 4, reinterpret_cast<const char*>(side), 4);
  const auto crc = static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(huge.data() + 12), 17));  // IHDR's type and data
  for (int i = 0; i < 4; ++i)
    huge[static_cast<size_t>(29 + i)] = static_cast<char>(crc >> (24 - 8 * i));
  auto declared = c.Post("/v1/predict", huge, "image/png");
  EXPECT_EQ(status(declared), 400);
  EXPECT_THAT(error(declared), HasSubstr("100000x100000"));
  auto large = c.Post("/v1/predict", std::string(8192, 'x'), "image/png");
  EXPECT_EQ(status(large), 413);
  httplib::Headers flood;
  for (int i = 0; i < 150; ++i) flood.emplace("X-Flood-" + std::to_string(i), "1");
  EXPECT_EQ(status(c.Get("/healthz", flood)), 431);
  // After all that, the server still answers.
  EXPECT_EQ(status(c.Post("/v1/predict", png, "image/png")), 200);
}

TEST_F(ServerTest, AConnectionStaysInStepAfterARefusedBody) {
  start();
  const Images images = random_images(1);
  auto c = client();
  c.set_keep_alive(true);
  EXPECT_EQ(c.Post("/elsewhere", std::string(3000, 'y'), "image/png")->status, 404);
  EXPECT_EQ(c.Put("/v1/predict", images.png[0], "image/png")->status, 405);
  auto res = c.Post("/v1/predict", images.png[0], "image/png");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_LT(
      max_difference(
          nlohmann::json::parse(res->body)["probabilities"].get<std::vector<double>>(),
          expected_probabilities(model_, images.tensors[0])),
      kTolerance);
}

/// A new connection to the server on loopback whose reads give up after `wait_s` (-1
/// when it cannot connect).
int connect_to(int port, double wait_s = 10) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const auto micros = static_cast<int64_t>(wait_s * 1e6);
  timeval wait{micros / 1000000, micros % 1000000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// Sends `request` on a new connection and closes it at once (a reset: SO_LINGER 0).
void send_and_vanish(int port, const std::string& request) {
  const int fd = connect_to(port);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL),
      static_cast<ssize_t>(request.size()));
  linger reset{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  ::close(fd);
}

TEST_F(ServerTest, ClientsGoneBeforeTheirAnswerOrMidBodyLeaveTheServerServing) {
  start();
  const std::string png = random_images(1).png[0];
  const std::string head =
      "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
      "Content-Length: " +
      std::to_string(png.size()) + "\r\n\r\n";
  for (int i = 0; i < 10; ++i) {
    send_and_vanish(port_, head + png);                // gone before the answer
    send_and_vanish(port_, head + png.substr(0, 40));  // gone mid-body
  }
  auto c = client();
  auto res = c.Post("/v1/predict", png, "image/png");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

/// What the server sent on a new connection given `request`, up to its close (or a reset,
/// or 10 s of silence: then `closed` is false).
struct Exchange {
  std::string received;
  bool closed = false;
};
/// What arrives on `fd` until the server closes it (or resets it, or `fd`'s wait passes).
Exchange read_to_close(int fd) {
  Exchange out;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n > 0) {
      out.received.append(buffer, static_cast<size_t>(n));
      continue;
    }
    out.closed = n == 0 || errno == ECONNRESET;
    return out;
  }
}

Exchange converse(int port, const std::string& request) {
  const int fd = connect_to(port);
  if (fd < 0) return {};
  // Sent from another thread: the server may answer and close before taking it all.
  std::thread sender([&] {
    size_t sent = 0;
    while (sent < request.size()) {
      const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
  });
  const Exchange out = read_to_close(fd);
  ::shutdown(fd, SHUT_RDWR);
  sender.join();
  ::close(fd);
  return out;
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// A chunked body past 4x --max-upload, made of pipelined requests: it is refused with 413
// and the connection closes; nothing in the body is ever answered as a request (request
// smuggling past a proxy that filters paths, and traffic amplification).
TEST_F(ServerTest, ARefusedBodyClosesTheConnectionAndNothingInItIsAnswered) {
  ServeOptions options;
  options.max_upload = 4096;
  start(options);
  std::string smuggled;
  while (smuggled.size() < 64 * 1024) smuggled += "GET /v1/model HTTP/1.1\r\nHost: x\r\n\r\n";
  std::string chunked =
      "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  for (size_t at = 0; at < smuggled.size(); at += 1000) {
    const std::string part = smuggled.substr(at, 1000);
    chunked += fmt::format("{:x}\r\n{}\r\n", part.size(), part);
  }
  chunked += "0\r\n\r\n" + smuggled;
  for (const std::string& request :
       {chunked,
        "POST /elsewhere HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
            chunked.substr(chunked.find("\r\n\r\n") + 4)}) {
    const Exchange e = converse(port_, request);
    EXPECT_TRUE(e.closed) << "the connection stayed open after a refused body";
    EXPECT_EQ(count_of(e.received, "HTTP/1.1 200"), 0u) << "a request inside a body was answered";
    EXPECT_LE(count_of(e.received, "HTTP/1.1 "), 1u);
  }
  // A body on a method that takes none (httplib would not read it): found by request_fuzz.
  const std::string inner = "GET /v1/model HTTP/1.1\r\nHost: x\r\n\r\n";
  for (const std::string method : {"GET /healthz", "HEAD /v1/predict", "OPTIONS /"}) {
    const Exchange e = converse(
        port_,
        method + " HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(inner.size()) +
            "\r\n\r\n" + inner + inner);
    EXPECT_TRUE(e.closed) << method;
    EXPECT_EQ(count_of(e.received, "HTTP/1.1 "), 1u) << method << ": " << e.received;
    EXPECT_EQ(e.received.substr(0, 12), "HTTP/1.1 400") << method;
  }
  EXPECT_EQ(client().Get("/healthz")->status, 200);
}

// A Content-Length that is not a count of bytes, or one beside a Transfer-Encoding (RFC 9112,
// 6.1), is a 400 at once and the connection closes; one past 4x --max-upload a 413 at once.
TEST_F(ServerTest, AnUntrustworthyBodyLengthIsRefusedAtOnceAndTheConnectionCloses) {
  ServeOptions options;
  options.max_upload = 4096;
  options.timeout_s = 60;  // an answer that waited for the read timeout would take a minute
  start(options);
  const std::string head = "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n";
  const std::vector<std::pair<std::string, std::string>> cases{
      {"Content-Length: -5\r\n", "HTTP/1.1 400"},
      {"Content-Length: 18446744073709551617\r\n", "HTTP/1.1 400"},
      {"Content-Length: 12abc\r\n", "HTTP/1.1 400"},
      {"Content-Length: 5\r\nContent-Length: 6\r\n", "HTTP/1.1 400"},
      {"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "HTTP/1.1 400"},
      {"Content-Length: 1000000\r\n", "HTTP/1.1 413"}};
  for (const auto& [headers, status] : cases) {
    const auto started = std::chrono::steady_clock::now();
    const Exchange e = converse(port_, head + headers + "\r\n");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    EXPECT_EQ(e.received.substr(0, status.size()), status) << headers << e.received;
    EXPECT_THAT(e.received, HasSubstr("\"error\"")) << headers;
    EXPECT_TRUE(e.closed) << headers;
    EXPECT_LT(seconds, 10.0) << headers << ": not answered at once";
  }
}

/// Connections that each hold a request begun and never finished (a thread busy reading
/// it, not an idle one), closed when it goes.
struct HeldConnections {
  HeldConnections(int port, int n) {
    for (int i = 0; i < n; ++i) {
      const int fd = connect_to(port);
      const std::string begun = "GET /healthz HTTP/1.1\r\nHo";
      if (fd >= 0) ::send(fd, begun.data(), begun.size(), MSG_NOSIGNAL);
      fds.push_back(fd);
    }
    // Each taken by the server (accepted and counted) before the test goes on.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  ~HeldConnections() {
    for (int fd : fds) ::close(fd);
  }
  std::vector<int> fds;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// At most `max_connections` open, each given a minute for its request and between two.
ServeOptions patient(int max_connections) {
  ServeOptions options;
  options.connections.max_connections = max_connections;
  options.connections.header_timeout_s = 60;
  options.connections.idle_timeout_s = 60;
  return options;
}

// 40 connections that say nothing and 10 that stopped mid-request, against deadlines of a
// minute, leave other clients answered: each connection has a thread of its own. (With a
// fixed pool of 16 threads, as before, every one of these requests waited a minute.)
TEST_F(ServerTest, IdleAndStalledConnectionsDoNotStarveOtherClients) {
  start(patient(128));
  std::vector<int> idle;
  for (int i = 0; i < 40; ++i) idle.push_back(connect_to(port_));
  HeldConnections stalled(port_, 10);
  for (int i = 0; i < 20; ++i) {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(5, 0);
    auto res = c.Get("/healthz");
    ASSERT_TRUE(res) << "request " << i << " was not answered within 5 s";
    EXPECT_EQ(res->status, 200);
  }
  for (int fd : idle) ::close(fd);
}

// A request whose bytes trickle in is answered 408 and closed at its deadline, whether its
// headers trickle (a byte every 100 ms: 6 s for the whole request) or its body does.
TEST_F(ServerTest, ARequestThatTricklesInIsCutAtItsDeadlineWith408) {
  ServeOptions options;
  options.connections.header_timeout_s = 1;
  options.connections.min_body_rate = 1000;
  start(options);
  const std::string headers = "GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: trickle\r\n\r\n";
  const std::string body_head =
      "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
      "Content-Length: 60\r\n\r\n";
  for (const auto& [head, trickle] :
       {std::pair{std::string(), headers}, std::pair{body_head, std::string(60, 'x')}}) {
    const int fd = connect_to(port_);
    ASSERT_GE(fd, 0);
    const auto started = std::chrono::steady_clock::now();
    std::atomic<bool> done{false};
    std::thread sender([&, head = head, trickle = trickle] {
      ::send(fd, head.data(), head.size(), MSG_NOSIGNAL);
      for (char c : trickle) {
        if (done || ::send(fd, &c, 1, MSG_NOSIGNAL) != 1) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
    const Exchange e = read_to_close(fd);
    const double seconds = seconds_since(started);
    done = true;
    sender.join();
    ::close(fd);
    EXPECT_EQ(e.received.substr(0, 12), "HTTP/1.1 408") << head << e.received;
    EXPECT_THAT(e.received, HasSubstr("did not arrive in time"));
    EXPECT_TRUE(e.closed);
    EXPECT_LT(seconds, 5.5) << "the trickle was read to its end";
  }
  EXPECT_EQ(client().Get("/healthz")->status, 200);
}

// At --max-connections open, the next connection is answered 503 with Retry-After at once
// and closed; /metrics counts it once the others have gone.
TEST_F(ServerTest, AConnectionBeyondTheCapIsAnswered503AtOnce) {
  start(patient(4));
  {
    HeldConnections held(port_, 4);
    const auto started = std::chrono::steady_clock::now();
    const Exchange e = converse(port_, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(e.received.substr(0, 12), "HTTP/1.1 503") << e.received;
    EXPECT_THAT(e.received, HasSubstr("Retry-After: 1"));
    EXPECT_THAT(e.received, HasSubstr("--max-connections"));
    EXPECT_TRUE(e.closed);
    EXPECT_LT(seconds_since(started), 5.0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto res = client().Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_THAT(
      res->body, HasSubstr("patchwise_connections_closed_total{reason=\"max-connections\"} 1"));
}

// A kept-alive connection idle between requests is closed at once when three quarters of
// --max-connections are open, and kept (up to --idle-timeout) when they are not.
TEST_F(ServerTest, AnIdleKeptAliveConnectionClosesEarlyOnlyWhenTheServerIsCrowded) {
  start(patient(8));
  for (const int busy : {2, 6}) {
    HeldConnections held(port_, busy);
    // Kept, the connection would wait out --idle-timeout (60 s): 3 s of it show that it
    // stays; closed at once, 20 s leave room for a loaded machine to get to it.
    const int fd = connect_to(port_, busy == 6 ? 20 : 3);
    ASSERT_GE(fd, 0);
    const std::string request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    const Exchange e = read_to_close(fd);
    ::close(fd);
    EXPECT_THAT(e.received, HasSubstr("HTTP/1.1 200"));
    // With itself, 3 of 8 open: kept, and the 3 s wait ends it. 7 of 8: closed.
    EXPECT_EQ(e.closed, busy == 6) << busy << " busy connections";
  }
}

// Bytes that are not UTF-8 in a method or a path are quoted escaped in the one-line JSON
// error (they ended the process from inside the JSON writer: found by request_fuzz).
TEST_F(ServerTest, BytesThatAreNotUtf8InARequestLineAreQuotedNotFatal) {
  start();
  for (const std::string& line :
       {std::string("G\x1e\xff\xff / HTTP/1.1"),
        std::string("GET /\xff\xfe HTTP/1.1"),
        std::string("\xff\xff /v1/predict HTTP/1.1")}) {
    const Exchange e = converse(port_, line + "\r\nHost: x\r\nConnection: close\r\n\r\n");
    ASSERT_EQ(e.received.substr(0, 10), "HTTP/1.1 4") << e.received;
    const std::string body = e.received.substr(e.received.find("\r\n\r\n") + 4);
    const nlohmann::json error = nlohmann::json::parse(body);
    EXPECT_THAT(error["error"].get<std::string>(), HasSubstr("\\xff")) << body;
  }
  EXPECT_EQ(client().Get("/healthz")->status, 200);
}

TEST_F(ServerTest, ATiledModelAnswersALargeImageWithItsTopTiles) {
  torch::manual_seed(3);
  ModelConfig c;
  c.tiled = true;
  c.image_h = c.image_w = c.grid.input = c.grid.patch_h = c.grid.patch_w = 24;
  c.grid.rows = c.grid.cols = 1;
  c.fusion = FusionRule::kGatedAttention;
  c.backbone.num_classes = 2;
  c.class_names = {"dark", "bright"};
  c.normalization = {{0.3}, {0.3}};
  c.tiles.tile = 32;
  c.tiles.min_foreground = 0;  // every tile of the 3x3 lattice
  PatchClassifier model(c);
  model->eval();
  save_model(path("tiled.pw"), model, nullptr);
  ServeOptions options;
  options.port = 0;
  options.top = 4;
  ModelServer server(path("tiled.pw"), options);
  const int port = server.bind();
  std::thread serving([&] { server.serve(); });
  const at::Tensor image = torch::randint(0, 256, {1, 96, 96}, torch::kUInt8);
  httplib::Client client("127.0.0.1", port);
  auto res = client.Post("/v1/predict", encode_png(image), "image/png");
  server.stop();
  serving.join();
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const auto answer = nlohmann::json::parse(res->body);
  EXPECT_EQ(answer["tiles"], 9);
  EXPECT_EQ(answer["score"], "attention");
  ASSERT_EQ(answer["top_tiles"].size(), 4u);
  EXPECT_GE(
      answer["top_tiles"][0]["score"].get<double>(), answer["top_tiles"][3]["score"].get<double>());
  // The model's own answer on the same image's bag.
  write_image(path("big.png"), image);
  const Bag bag = read_bag(path("big.png"), model_bag_options(c));
  const BagPrediction own = predict_bag(model, bag.tiles, -1);
  EXPECT_LT(
      max_difference(answer["probabilities"].get<std::vector<double>>(), own.probabilities),
      kTolerance);
}

TEST_F(ServerTest, ATokenGuardsTheApiButNotTheProbes) {
  ServeOptions options;
  options.token = "s3cret";
  start(options);
  auto c = client();
  const std::string png = random_images(1).png[0];
  auto none = c.Post("/v1/predict", png, "image/png");
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(none->get_header_value("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(c.Get("/v1/model", {{"Authorization", "Bearer wrong!"}})->status, 401);
  EXPECT_EQ(c.Get("/metrics")->status, 401);
  EXPECT_EQ(c.Get("/healthz")->status, 200);
  EXPECT_EQ(c.Get("/")->status, 200);
  EXPECT_EQ(
      c.Post("/v1/predict", {{"Authorization", "Bearer s3cret"}}, png, "image/png")->status, 200);
}

TEST_F(ServerTest, ProbesModelInformationMetricsAndThePage) {
  start();
  auto c = client();
  EXPECT_EQ(c.Get("/healthz")->status, 200);
  EXPECT_EQ(c.Get("/readyz")->status, 200);
  auto model = c.Get("/v1/model");
  ASSERT_EQ(model->status, 200);
  const auto info = nlohmann::json::parse(model->body);
  EXPECT_EQ(info["classes"], nlohmann::json({"a", "b", "c"}));
  EXPECT_EQ(info["config"]["backbone"]["name"], "small-cnn");
  ASSERT_EQ(c.Post("/v1/predict", random_images(1).png[0], "image/png")->status, 200);
  auto metrics = c.Get("/metrics");
  ASSERT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->get_header_value("Content-Type"), HasSubstr("text/plain"));
  EXPECT_THAT(
      metrics->body, HasSubstr("patchwise_requests_total{path=\"/v1/predict\",status=\"200\"} 1"));
  EXPECT_THAT(metrics->body, HasSubstr("patchwise_batch_size_count 1"));
  EXPECT_THAT(metrics->body, HasSubstr("patchwise_images_total 1"));
  EXPECT_THAT(metrics->body, HasSubstr("patchwise_queue_depth 0"));
  auto page = c.Get("/");
  EXPECT_THAT(page->get_header_value("Content-Type"), HasSubstr("text/html"));
  EXPECT_THAT(page->body, HasSubstr("/v1/predict"));
}

TEST_F(ServerTest, ReloadSwapsTheModelAndABadFileKeepsTheCurrentOne) {
  start();
  const Images images = random_images(1);
  PatchClassifier other = random_model(99);
  save_model(path("other.pw"), other, nullptr);
  auto c = client();
  const auto probabilities = [&] {
    auto res = c.Post("/v1/predict", images.png[0], "image/png");
    return nlohmann::json::parse(res->body)["probabilities"].get<std::vector<double>>();
  };
  server_->reload(path("other.pw"));
  EXPECT_LT(
      max_difference(probabilities(), expected_probabilities(other, images.tensors[0])),
      kTolerance);
  std::ofstream(path("bad.pw")) << "not a model";
  EXPECT_THROW(server_->reload(path("bad.pw")), InputError);
  EXPECT_LT(
      max_difference(probabilities(), expected_probabilities(other, images.tensors[0])),
      kTolerance);
}

TEST_F(ServerTest, StopAnswersTheRequestsTakenAndReturns) {
  ServeOptions options;
  options.batching = {4, 20, 256};
  start(options);
  const std::string png = random_images(1).png[0];
  std::atomic<int> bad_status{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&] {
      auto c = client();
      for (int r = 0; r < 20; ++r) {
        auto res = c.Post("/v1/predict", png, "image/png");
        if (!res) break;  // the listening socket is gone: refused, not half-answered
        if (res->status != 200 && res->status != 503) ++bad_status;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server_->stop();
  serving_.join();
  for (auto& t : clients) t.join();
  EXPECT_EQ(bad_status.load(), 0);
}

}  // namespace
}  // namespace patchwise
