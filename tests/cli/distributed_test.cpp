// Data-parallel training end to end: processes of the patchwise binary on 127.0.0.1
// talking through c10d (TCPStore + Gloo). Two processes must end where one process
// with the same global batch ends; a killed or missing peer must stop the survivor
// with one clear line, and leave the model file alone.

#include "patchwise/dist/distributed.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "patchwise/model/model_file.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;

const std::string kData = PATCHWISE_FASHION_DIR;

/// A port nobody listens on right now (the kernel's pick).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

/// The environment torchrun gives rank `rank` of `world` on this machine.
std::map<std::string, std::string> rank_env(int port, int rank, int world) {
  return {
      {"MASTER_ADDR", "127.0.0.1"},
      {"MASTER_PORT", std::to_string(port)},
      {"RANK", std::to_string(rank)},
      {"LOCAL_RANK", std::to_string(rank)},
      {"WORLD_SIZE", std::to_string(world)},
      {"LOCAL_WORLD_SIZE", std::to_string(world)}};
}

/// A child process running `program args...` with `env` added, stdout and stderr in files.
struct Child {
  pid_t pid = -1;
  fs::path out, err;

  Child(
      const std::string& program, const std::vector<std::string>& args,
      const std::map<std::string, std::string>& env, const fs::path& dir, const std::string& name)
      : out(dir / (name + ".out")), err(dir / (name + ".err")) {
    pid = fork();
    if (pid == 0) {
      for (const char* v :
           {"MASTER_ADDR",
            "MASTER_PORT",
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "LOCAL_WORLD_SIZE",
            "TORCHELASTIC_USE_AGENT_STORE"}) {
        unsetenv(v);
      }
      for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
      const int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(o, 1);
      dup2(e, 2);
      std::vector<char*> argv{const_cast<char*>(program.c_str())};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(program.c_str(), argv.data());
      _exit(127);
    }
  }
  /// The exit code (-signal when killed); -1000 when it ran past `limit`.
  int wait_for(std::chrono::seconds limit) {
    const auto deadline = Clock::now() + limit;
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1000;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  }
  std::string stdout_text() const { return test::read_file(out); }
  std::string stderr_text() const { return test::read_file(err); }
};

/// The flags of a short run on a Fashion-MNIST subset: 1 thread, plain SGD (see
/// expect_same_sgd_steps), no dropout (whose masks would differ per rank), no batch norm
/// (whose statistics are per rank).
/// `extra` (flag, value pairs; value "" for a flag alone) adds flags or replaces the defaults.
std::vector<std::string> train_args(
    int64_t images, const std::string& out, const std::vector<std::string>& extra = {}) {
  std::vector<std::pair<std::string, std::string>> flags = {
      {"--data", kData},
      {"--limit-train", std::to_string(images)},
      {"--limit-test", "50"},
      {"--epochs", "1"},
      {"--batch", "32"},
      {"--dropout", "0"},
      {"--seed", "3"},
      {"--threads", "1"},
      {"--optimizer", "sgd"},
      {"--lr", "0.05"},
      {"--out", out}};
  for (size_t i = 0; i + 1 < extra.size(); i += 2) {
    auto it = std::find_if(
        flags.begin(), flags.end(), [&](const auto& f) { return f.first == extra[i]; });
    if (it != flags.end())
      it->second = extra[i + 1];
    else
      flags.emplace_back(extra[i], extra[i + 1]);
  }
  std::vector<std::string> args{"train"};
  for (const auto& [flag, value] : flags) {
    args.push_back(flag);
    if (!value.empty()) args.push_back(value);  // "": a flag without a value
  }
  return args;
}

int count_lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

/// Checks that `two` (data-parallel) took the same plain-SGD steps from `start` as
/// `one` (one process). Both add up the same per-image gradients, in another order and
/// through other kernel blockings, so each gradient differs by float32 rounding: for a
/// sum of n terms at most about n * 2^-24 of the sum of their magnitudes, and in practice
/// about sqrt(n) * 2^-24 (n is at most 32 images * 4 patches * 32 * 32 positions ~ 1.3e5
/// here: ~2e-5). Plain SGD moves a weight by lr times its gradient, so the weights'
/// difference stays of that relative size against the distance they travelled; Adam would
/// divide by each gradient's RMS and magnify the rounding of near-zero gradients, which is
/// why these runs use SGD. The bound, 1e-3 of each tensor's travel (in the 2-norm), leaves
/// room for that and for the second-order drift of a few steps (measured on an AMD EPYC:
/// 2e-7 to 3e-5), plus the rounding of the weights themselves at every step (2^-23 of
/// their size per step and element), and still fails when the averaging is wrong: an
/// unweighted uneven last batch is off by 4e-3 to 1e-2 of the travel, a rank without
/// images by 0.3 (both checked by breaking the trainer on purpose).
void expect_same_sgd_steps(
    PatchClassifier& one, PatchClassifier& two, PatchClassifier& start, int64_t steps) {
  auto a = one->named_parameters();
  auto b = two->named_parameters();
  auto s = start->parameters();
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(a.size(), s.size());
  double travel_sq = 0, start_sq = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double travel = (a[i].value() - s[i]).norm().item<double>();
    const double diff = (a[i].value() - b[i].value()).norm().item<double>();
    const double ulps = std::sqrt(static_cast<double>(s[i].numel())) * static_cast<double>(steps) *
                        std::ldexp(a[i].value().abs().max().item<double>(), -23);
    EXPECT_LE(diff, 1e-3 * travel + ulps) << a[i].key() << ": travelled " << travel;
    travel_sq += travel * travel;
    start_sq += s[i].norm().item<double>() * s[i].norm().item<double>();
  }
  // Training moved the weights (equal models are not two no-ops), and `start` is where
  // they started: a different random start would be as far away as the weights are long.
  EXPECT_GT(std::sqrt(travel_sq), 1e-2);
  EXPECT_LT(std::sqrt(travel_sq), 0.5 * std::sqrt(start_sq));
}

class DistributedTest : public test::SeededTest {
 protected:
  /// Trains once in one process and once in two (through scripts/launch-local) with
  /// the same flags, and checks that both end with the same weights and metrics.
  void expect_two_processes_match_one(int64_t images, const std::vector<std::string>& extra) {
    std::vector<std::string> single_args = train_args(images, path("one.pw"), extra);
    single_args.insert(single_args.end(), {"--metrics", path("one.jsonl")});
    Child single(PATCHWISE_BINARY, single_args, {}, dir_, "single");
    ASSERT_EQ(single.wait_for(std::chrono::seconds(60)), 0) << single.stderr_text();

    std::vector<std::string> two_args = train_args(images, path("two.pw"), extra);
    two_args[0] = "2";  // launch-local N TRAIN_ARGS...
    two_args.insert(two_args.end(), {"--metrics", path("two.jsonl")});
    Child two(PATCHWISE_LAUNCH_LOCAL, two_args, {{"PATCHWISE", PATCHWISE_BINARY}}, dir_, "two");
    ASSERT_EQ(two.wait_for(std::chrono::seconds(60)), 0) << two.stderr_text();
    // Rank 1 prints nothing: one epoch line, from rank 0; nothing on stderr.
    const std::string log = two.stdout_text();
    EXPECT_EQ(
        std::count(log.begin(), log.end(), '\n') -
            static_cast<long>(count_lines(single.stdout_text())),
        2)  // the two data-parallel lines
        << log;
    EXPECT_THAT(log, HasSubstr("data-parallel: 2 processes"));
    EXPECT_EQ(two.stderr_text(), "");

    PatchClassifier one = load_model(path("one.pw"));
    PatchClassifier both = load_model(path("two.pw"));
    torch::manual_seed(3);  // train_args' --seed: the weights both runs started from
    PatchClassifier start(one->config());
    expect_same_sgd_steps(one, both, start, (images + 31) / 32);

    // Rounding may move a near-tie between two classes: at most one image either way.
    // A mean cross-entropy moves by at most twice its logits' largest change. Those move by
    // the weights' drift above and by float32 roundings of forward sums (at most 288
    // products) in other blockings: about sqrt(288) u = 1e-6 of their magnitudes per layer
    // (u = 2^-24; the random-walk size, as for the gradients above), 5e-6 over small-cnn's
    // five layers, 1e-5 on logits of a few units: 2e-5 on a loss, under 1e-4.
    const auto m1 = nlohmann::json::parse(test::read_file(path("one.jsonl")));
    const auto m2 = nlohmann::json::parse(test::read_file(path("two.jsonl")));
    EXPECT_NEAR(m1["loss"].get<double>(), m2["loss"].get<double>(), 1e-4);
    EXPECT_NEAR(m1["accuracy"].get<double>(), m2["accuracy"].get<double>(), 1.0 / images + 1e-12);
    EXPECT_NEAR(m1["test_loss"].get<double>(), m2["test_loss"].get<double>(), 1e-4);
    EXPECT_NEAR(
        m1["test_accuracy"].get<double>(), m2["test_accuracy"].get<double>(), 1.0 / 50 + 1e-12);
  }
};

TEST_F(DistributedTest, TwoProcessesEndWithTheWeightsOfOne) {
  // 249 images in batches of 32: seven full batches, then 25 split 13 + 12, whose
  // losses must be weighted 26/25 and 24/25 for the average to be the batch's mean.
  expect_two_processes_match_one(249, {});
}

TEST_F(DistributedTest, EmptyShardsAndUnusedParametersStillMatch) {
  // 225 = 7 * 32 + 1: rank 1 has no image of the last batch. The fused loss through
  // attention leaves the patch-logit layer without a gradient (find_unused).
  expect_two_processes_match_one(225, {"--loss", "fused", "--fusion", "attention"});
}

TEST_F(DistributedTest, BagsOfDifferentSizesTrainAsInOneProcess) {
  // Megapixel-MNIST-like canvases: each rank's bags differ in size at every step.
  const fs::path digits = dir_ / "digits";
  fs::create_directories(digits);
  for (int k = 0; k <= 9; ++k) {  // 4 digits per class: a bright bar at row 4 + 2k
    std::ofstream out(digits / (std::to_string(k) + ".json"));
    out << "{\"data\": [";
    for (int i = 0; i < 4 * 784; ++i)
      out << (i ? "," : "") << ((i % 784) / 28 == 4 + 2 * k ? 1 : 0);
    out << "]}";
  }
  Child import(
      PATCHWISE_BINARY,
      {"import",
       "megapixel-mnist",
       "--from",
       digits.string(),
       "--out",
       path("mp"),
       "--size",
       "140",
       "--train",
       "40",
       "--test",
       "20",
       "--scribbles",
       "3"},
      {},
      dir_,
      "import");
  ASSERT_EQ(import.wait_for(std::chrono::seconds(60)), 0) << import.stderr_text();
  // 40 canvases in batches of 32: a full batch, then 8 split 4 + 4.
  expect_two_processes_match_one(
      40,
      {"--data",
       path("mp"),
       "--limit-train",
       "0",
       "--limit-test",
       "0",
       "--tile",
       "28",
       "--min-foreground",
       "0.01",
       "--no-mask-cleanup",
       "",
       "--input",
       "28",
       "--fusion",
       "gated-attention",
       "--loss",
       "both"});
}

TEST_F(DistributedTest, AKilledPeerStopsTheOtherWithOneLineAndTheModelFileIntact) {
  const int port = free_port();
  const std::string out = path("model.pw");
  { std::ofstream(out) << "an older model"; }
  // Long enough to be mid-run when rank 1 dies; a checkpoint every 5 steps shows when.
  const auto args = train_args(
      6400,
      out,
      {"--epochs",
       "3",
       "--checkpoint-every",
       "5",
       "--checkpoint",
       path("run.ckpt"),
       "--dist-timeout",
       "30"});
  Child rank0(PATCHWISE_BINARY, args, rank_env(port, 0, 2), dir_, "rank0");
  Child rank1(PATCHWISE_BINARY, args, rank_env(port, 1, 2), dir_, "rank1");
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (!fs::exists(path("run.ckpt")) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(fs::exists(path("run.ckpt"))) << rank0.stderr_text();
  kill(rank1.pid, SIGKILL);
  const auto killed = Clock::now();
  EXPECT_EQ(rank1.wait_for(std::chrono::seconds(10)), -SIGKILL);
  EXPECT_EQ(rank0.wait_for(std::chrono::seconds(30)), 1);
  // A dead peer is noticed at once (a reset connection), long before --dist-timeout.
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - killed).count(), 10.0);
  const std::string err = rank0.stderr_text();
  EXPECT_EQ(count_lines(err), 1) << err;
  EXPECT_THAT(err, HasSubstr("patchwise: error: distributed training: rank 0 lost its peers"));
  EXPECT_THAT(err, HasSubstr("127.0.0.1"));
  EXPECT_THAT(err, HasSubstr("no model written; last checkpoint " + path("run.ckpt")));
  EXPECT_EQ(test::read_file(out), "an older model");
  EXPECT_NO_THROW(load_model(path("run.ckpt")));  // the checkpoint is whole
}

TEST_F(DistributedTest, ARankThatNeverArrivesEndsTheRendezvousAfterTheTimeout) {
  const int port = free_port();
  const auto args = train_args(64, path("model.pw"), {"--dist-timeout", "3"});
  const auto start = Clock::now();
  Child rank0(PATCHWISE_BINARY, args, rank_env(port, 0, 2), dir_, "rank0");
  EXPECT_EQ(rank0.wait_for(std::chrono::seconds(40)), 1);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_GE(seconds, 3.0);
  EXPECT_LT(seconds, 30.0);
  const std::string err = rank0.stderr_text();
  EXPECT_EQ(count_lines(err), 1) << err;
  EXPECT_THAT(
      err,
      HasSubstr(
          "rank 0 timed out at the rendezvous: only 1 of 2 ranks joined at "
          "127.0.0.1:" +
          std::to_string(port) + " within 3 s"));
  EXPECT_FALSE(fs::exists(path("model.pw")));

  // A rank whose rank 0 never comes cannot reach the store.
  Child rank1(PATCHWISE_BINARY, args, rank_env(free_port(), 1, 2), dir_, "rank1");
  EXPECT_EQ(rank1.wait_for(std::chrono::seconds(40)), 1);
  EXPECT_THAT(
      rank1.stderr_text(),
      HasSubstr("rank 1 could not reach the rendezvous store at "
                "127.0.0.1:"));
  EXPECT_EQ(count_lines(rank1.stderr_text()), 1) << rank1.stderr_text();
}

TEST_F(DistributedTest, BadDistributedSettingsAreInputErrors) {
  struct Case {
    std::map<std::string, std::string> env;
    std::vector<std::string> extra;
    std::string needle;
  };
  const int port = free_port();
  auto env = [&](std::map<std::string, std::string> changes) {
    auto e = rank_env(port, 0, 2);
    for (auto& [k, v] : changes) {
      if (v.empty())
        e.erase(k);
      else
        e[k] = v;
    }
    return e;
  };
  const std::vector<Case> cases = {
      {env({{"RANK", "2"}}), {}, "RANK: '2', expected 0..1 (WORLD_SIZE is 2)"},
      {env({{"RANK", ""}}), {}, "RANK: unset, expected 0..1"},
      {env({{"WORLD_SIZE", "two"}}), {}, "WORLD_SIZE: 'two', expected a positive number"},
      {env({{"MASTER_PORT", "70000"}}), {}, "MASTER_PORT: '70000', expected a port 1..65535"},
      {env({{"MASTER_ADDR", ""}}), {}, "MASTER_ADDR: unset, expected the host of rank 0"},
      {env({{"LOCAL_RANK", "3"}}), {}, "LOCAL_RANK: '3', expected 0..1"},
      {env({}), {"--batch", "33"}, "--batch: 33, expected a multiple of the 2 processes"},
      {env({}), {"--dist-timeout", "0"}, "--dist-timeout: 0, expected a positive number"},
  };
  for (const Case& c : cases) {
    auto args = train_args(64, path("model.pw"), c.extra);
    Child child(PATCHWISE_BINARY, args, c.env, dir_, "bad");
    EXPECT_EQ(child.wait_for(std::chrono::seconds(20)), 2) << c.needle;
    EXPECT_THAT(child.stderr_text(), HasSubstr(c.needle));
    EXPECT_EQ(count_lines(child.stderr_text()), 1) << child.stderr_text();
  }
  // launch-local's own argument.
  Child script(PATCHWISE_LAUNCH_LOCAL, {"zero"}, {}, dir_, "script");
  EXPECT_EQ(script.wait_for(std::chrono::seconds(10)), 2);
  EXPECT_THAT(script.stderr_text(), HasSubstr("N: 'zero', expected a positive number"));
}

TEST(DistributedConfigTest, ReadsTorchrunsVariables) {
  std::map<std::string, std::string> env = {
      {"WORLD_SIZE", "4"},
      {"RANK", "3"},
      {"LOCAL_RANK", "1"},
      {"LOCAL_WORLD_SIZE", "2"},
      {"MASTER_ADDR", "node0"},
      {"MASTER_PORT", "29500"},
      {"TORCHELASTIC_USE_AGENT_STORE", "True"},
      {"TORCHELASTIC_RESTART_COUNT", "2"},
      {"GLOO_SOCKET_IFNAME", "eth1"}};
  auto get = [&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  DistributedConfig c = distributed_config_from_env(get);
  EXPECT_TRUE(c.enabled());
  EXPECT_EQ(c.world_size, 4);
  EXPECT_EQ(c.rank, 3);
  EXPECT_EQ(c.local_rank, 1);
  EXPECT_EQ(c.local_world_size, 2);
  EXPECT_EQ(c.master_addr, "node0");
  EXPECT_EQ(c.master_port, 29500);
  EXPECT_TRUE(c.agent_store);
  EXPECT_EQ(c.restart_count, "2");
  EXPECT_EQ(c.socket_ifname, "eth1");

  env = {{"RANK", "7"}};  // no WORLD_SIZE: one process, whatever else is set
  EXPECT_FALSE(distributed_config_from_env(get).enabled());
  env = {{"WORLD_SIZE", "1"}, {"RANK", "junk"}};
  EXPECT_FALSE(distributed_config_from_env(get).enabled());
}

}  // namespace
}  // namespace patchwise
