// patchwise serve behind Debian's nginx with the configuration docs/nginx-patchwise.conf
// gives users: answers pass through, and what nginx is there for (hundreds of idle
// connections, oversized bodies, contradictory framing) stops at nginx.

#include <arpa/inet.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include "patchwise/data/image.h"
#include "patchwise/model/model_file.h"
#include "patchwise/serve/server.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr const char* kNginx = "/usr/sbin/nginx";

/// A TCP port nobody listens on now.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval wait{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
  return ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 ? fd : -1;
}

/// The answer's first line to `request` sent raw on a new connection.
std::string status_line(int port, const std::string& request) {
  const int fd = connect_to(port);
  if (fd < 0) return "no connection";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  char buffer[4096];
  const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
  ::close(fd);
  const std::string got = n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "";
  return got.substr(0, got.find("\r\n"));
}

class ProxyTest : public test::SeededTest {
 protected:
  void SetUp() override {
    test::SeededTest::SetUp();
    if (!fs::exists(kNginx)) GTEST_SKIP() << kNginx << " is missing (scripts/install-deps)";
    model_ = test::random_grid_model({"a", "b", "c"});
    save_model(path("m.pw"), model_, nullptr);
    ServeOptions options;
    options.port = 0;
    server_ = std::make_unique<ModelServer>(path("m.pw"), options);
    const int upstream = server_->bind();
    serving_ = std::thread([this] { server_->serve(); });
    port_ = free_port();
    start_nginx(upstream);
  }
  void TearDown() override {
    if (nginx_started_) {
      std::system(fmt::format("{} -p {} -c nginx.conf -s stop", kNginx, path("nginx")).c_str());
      // The master removes its pid file as it exits: the folder is removed after that.
      const std::string pid = path("nginx") + "/nginx.pid";
      for (int i = 0; i < 200 && fs::exists(pid); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
      }
    }
    if (server_) server_->stop();
    if (serving_.joinable()) serving_.join();
    test::SeededTest::TearDown();
  }

  /// docs/nginx-patchwise.conf with the test's ports, inside a main configuration that
  /// keeps every file of nginx's in the test's folder.
  void start_nginx(int upstream) {
    std::ifstream in(PATCHWISE_SOURCE_DIR "/docs/nginx-patchwise.conf");
    std::stringstream site;
    site << in.rdbuf();
    std::string conf = std::regex_replace(
        site.str(), std::regex("127\\.0\\.0\\.1:8080"), fmt::format("127.0.0.1:{}", upstream));
    conf = std::regex_replace(
        conf, std::regex("listen 80;"), fmt::format("listen 127.0.0.1:{};", port_));
    ASSERT_NE(conf.find(std::to_string(upstream)), std::string::npos);
    const std::string dir = path("nginx");
    fs::create_directories(dir + "/logs");
    std::ofstream(dir + "/site.conf") << conf;
    std::ofstream(dir + "/nginx.conf") << fmt::format(
        "{}daemon on;\npid {}/nginx.pid;\nerror_log {}/logs/error.log;\n"
        "events {{ worker_connections 2048; }}\n"
        "http {{\n access_log off;\n client_body_temp_path {}/body;\n"
        " proxy_temp_path {}/proxy;\n fastcgi_temp_path {}/fastcgi;\n uwsgi_temp_path {}/uwsgi;\n"
        " scgi_temp_path {}/scgi;\n include {}/site.conf;\n}}\n",
        ::geteuid() == 0 ? "user root;\n" : "",
        dir,
        dir,
        dir,
        dir,
        dir,
        dir,
        dir,
        dir);
    const int rc = std::system(
        fmt::format("{} -p {} -c nginx.conf -e {}/logs/error.log", kNginx, dir, dir).c_str());
    ASSERT_EQ(rc, 0) << "nginx did not start; see " << dir << "/logs/error.log";
    nginx_started_ = true;
    for (int i = 0; i < 100 && status_line(port_, "GET /healthz HTTP/1.0\r\n\r\n").empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  PatchClassifier model_{nullptr};
  std::unique_ptr<ModelServer> server_;
  std::thread serving_;
  int port_ = 0;
  bool nginx_started_ = false;
};

TEST_F(ProxyTest, AnswersPassThroughAndWhatNginxIsForStopsThere) {
  const at::Tensor image = torch::randint(0, 256, {1, 28, 28}, torch::kUInt8);
  write_image(path("x.png"), image);
  std::ifstream file(path("x.png"), std::ios::binary);
  const std::string png((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());

  // 600 connections that say nothing: more than serve's --max-connections, held by nginx.
  std::vector<int> idle;
  for (int i = 0; i < 600; ++i) idle.push_back(connect_to(port_));
  httplib::Client c("127.0.0.1", port_);
  c.set_read_timeout(10, 0);
  auto res = c.Post("/v1/predict", png, "image/png");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(nlohmann::json::parse(res->body)["probabilities"].size(), 3u);
  for (int fd : idle) ::close(fd);

  EXPECT_THAT(
      status_line(
          port_, "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"),
      HasSubstr("413"));
  EXPECT_THAT(
      status_line(
          port_,
          "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
          "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
      HasSubstr("400"));
}

}  // namespace
}  // namespace patchwise
