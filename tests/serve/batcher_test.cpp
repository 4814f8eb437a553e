#include "patchwise/serve/batcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace patchwise {
namespace {

/// Records every batch's size; answers each request with twice its number.
struct Doubler {
  std::mutex mutex;
  std::vector<size_t> sizes;
  std::vector<int> operator()(std::vector<int>& in) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      sizes.push_back(in.size());
    }
    std::vector<int> out;
    for (int v : in) out.push_back(2 * v);
    return out;
  }
};

TEST(Batcher, ConcurrentCallersEachGetTheirOwnAnswer) {
  Doubler doubler;
  Batcher<int, int> batcher(
      {/*max_batch=*/8, /*max_delay_ms=*/20, /*max_queue=*/1024},
      [&](std::vector<int>& in) { return doubler(in); });
  constexpr int kThreads = 12, kEach = 40;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const int value = t * 1000 + i;
        auto future = batcher.submit(value);
        if (!future || future->get() != 2 * value) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  size_t total = 0, largest = 0;
  for (size_t s : doubler.sizes) {
    total += s;
    largest = std::max(largest, s);
    EXPECT_LE(s, 8u);
  }
  EXPECT_EQ(total, static_cast<size_t>(kThreads * kEach));
  EXPECT_GT(largest, 1u) << "twelve concurrent callers and a 20 ms window never shared a batch";
}

TEST(Batcher, ALoneRequestLeavesAfterTheDelay) {
  Doubler doubler;
  Batcher<int, int> batcher({64, 1.0, 16}, [&](std::vector<int>& in) { return doubler(in); });
  auto future = batcher.submit(21);
  ASSERT_TRUE(future.has_value());
  ASSERT_EQ(future->wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(future->get(), 42);
}

TEST(Batcher, RefusesBeyondTheQueueAndAnswersTheQueuedOnDrain) {
  std::mutex gate;
  gate.lock();  // the first batch waits here until the queue has been filled
  std::atomic<int> batches{0};
  auto batcher =
      std::make_unique<Batcher<int, int>>(BatcherOptions{1, 0.0, 3}, [&](std::vector<int>& in) {
        if (batches++ == 0) std::lock_guard<std::mutex> wait(gate);
        return in;
      });
  std::vector<std::future<int>> taken;
  auto first = batcher->submit(0);
  ASSERT_TRUE(first.has_value());
  while (batcher->queue_depth() != 0) std::this_thread::yield();  // the worker holds it
  for (int i = 1; i <= 3; ++i) {
    auto f = batcher->submit(i);
    ASSERT_TRUE(f.has_value()) << "request " << i << " fits the queue of 3";
    taken.push_back(std::move(*f));
  }
  EXPECT_FALSE(batcher->submit(4).has_value()) << "a fourth waiting request exceeds max_queue";
  gate.unlock();
  std::thread drain([&] { batcher->drain(); });
  drain.join();
  EXPECT_EQ(first->get(), 0);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(taken[static_cast<size_t>(i)].get(), i + 1);
  EXPECT_FALSE(batcher->submit(5).has_value()) << "a drained batcher takes nothing";
}

TEST(Batcher, AnExceptionReachesEveryCallerOfItsBatch) {
  Batcher<int, int> batcher({4, 50.0, 16}, [](std::vector<int>& in) -> std::vector<int> {
    throw std::runtime_error("model failed on " + std::to_string(in.size()));
  });
  auto a = batcher.submit(1);
  auto b = batcher.submit(2);
  ASSERT_TRUE(a && b);
  EXPECT_THROW(a->get(), std::runtime_error);
  EXPECT_THROW(b->get(), std::runtime_error);
}

TEST(Batcher, AWrongResultCountIsAnErrorNotAMixUp) {
  Batcher<int, int> batcher({4, 0.0, 16}, [](std::vector<int>&) { return std::vector<int>{}; });
  auto a = batcher.submit(1);
  ASSERT_TRUE(a.has_value());
  EXPECT_THROW(a->get(), std::logic_error);
}

TEST(Batcher, RefusesOptionsThatCannotWork) {
  const auto run = [](std::vector<int>& in) { return in; };
  EXPECT_THROW((Batcher<int, int>({0, 1.0, 4}, run)), std::invalid_argument);
  EXPECT_THROW((Batcher<int, int>({1, -1.0, 4}, run)), std::invalid_argument);
  EXPECT_THROW((Batcher<int, int>({1, 1.0, 0}, run)), std::invalid_argument);
}

}  // namespace
}  // namespace patchwise
