// The cache oneDNN's primitives are kept in: made once per key, bounded, shared safely.
#include "patchwise/base/bounded_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

namespace patchwise {
namespace {

struct Made {
  int key;
};

/// A cache of `capacity` and how many entries it has made.
struct Counting {
  explicit Counting(size_t capacity) : cache(capacity) {}
  std::shared_ptr<Made> get(int key) {
    return cache.get(key, [&] {
      ++made;
      return std::make_unique<Made>(Made{key});
    });
  }
  BoundedCache<int, Made> cache;
  int made = 0;
};

TEST(BoundedCacheTest, MakesEachKeyOnceAndKeepsAtMostItsCapacity) {
  Counting c(3);
  for (int round = 0; round < 2; ++round) {
    for (int key : {1, 2, 3}) EXPECT_EQ(c.get(key)->key, key);
  }
  EXPECT_EQ(c.made, 3);
  EXPECT_EQ(c.cache.size(), 3u);
  for (int key = 4; key < 100; ++key) c.get(key);
  EXPECT_EQ(c.cache.size(), 3u);
  EXPECT_EQ(c.made, 99);
}

TEST(BoundedCacheTest, DropsTheLeastRecentlyUsedAndHeldEntriesLiveOn) {
  Counting c(2);
  const std::shared_ptr<Made> one = c.get(1);
  c.get(2);
  c.get(1);  // 2 is now the least recent
  c.get(3);  // drops 2
  EXPECT_EQ(c.made, 3);
  c.get(1);
  EXPECT_EQ(c.made, 3);  // 1 was kept
  c.get(2);
  EXPECT_EQ(c.made, 4);  // 2 was dropped, and is made again (dropping 3)
  c.get(4);              // drops 1, which `one` still holds
  EXPECT_EQ(one->key, 1);
}

TEST(BoundedCacheTest, ThreadsAskingForOneKeyShareOneEntry) {
  BoundedCache<int, Made> cache(4);
  std::atomic<int> made{0};
  std::vector<std::shared_ptr<Made>> got(8);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t) {
    threads.emplace_back([&, t] {
      got[t] = cache.get(7, [&] {
        ++made;
        return std::make_unique<Made>(Made{7});
      });
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(made.load(), 1);
  for (const auto& p : got) EXPECT_EQ(p.get(), got[0].get());
}

}  // namespace
}  // namespace patchwise
