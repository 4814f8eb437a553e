// The caching CPU allocator: large blocks come back from the cache, within the limit,
// and tensors computed through it are the same as through the C library's.

#include "patchwise/core/cpu_allocator.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace patchwise {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

TEST(CpuAllocator, SizeClassesRoundLargeBlocksUpByAtMostAnEighth) {
  EXPECT_EQ(cpu_cache_size_class(1000), 1000);
  EXPECT_EQ(cpu_cache_size_class(kMiB - 1), kMiB - 1);
  for (int64_t bytes : {kMiB, kMiB + 1, 3 * kMiB + 12345, 700 * kMiB + 7}) {
    const int64_t cls = cpu_cache_size_class(bytes);
    EXPECT_GE(cls, bytes);
    EXPECT_LE(cls, bytes + bytes / 8) << bytes;
    EXPECT_EQ(cpu_cache_size_class(cls), cls) << "a class is its own class";
  }
}

TEST(CpuAllocator, AFreedLargeBlockIsHandedOutAgainAndTheLimitHolds) {
  const at::Tensor before = torch::arange(1000, torch::kFloat32);  // any earlier allocator
  use_caching_cpu_allocator(64 * kMiB);
  empty_cpu_cache();
  const CpuCacheStats start = cpu_cache_stats();
  void* first = nullptr;
  {
    at::Tensor t = torch::empty({4 * kMiB / 4}, torch::kFloat32);
    first = t.data_ptr();
  }
  EXPECT_EQ(cpu_cache_stats().cached_bytes, cpu_cache_size_class(4 * kMiB));
  {
    at::Tensor t = torch::empty({4 * kMiB / 4 - 100}, torch::kFloat32);  // same class
    EXPECT_EQ(t.data_ptr(), first);
  }
  const CpuCacheStats after = cpu_cache_stats();
  EXPECT_EQ(after.hits - start.hits, 1);
  EXPECT_EQ(after.misses - start.misses, 1);
  {
    at::Tensor big = torch::empty({100 * kMiB / 4}, torch::kFloat32);  // over the limit
  }
  EXPECT_LE(cpu_cache_stats().cached_bytes, 64 * kMiB);
  use_caching_cpu_allocator(0);  // a limit of 0 frees what is held and keeps nothing
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 0);
  { at::Tensor t = torch::empty({4 * kMiB / 4}, torch::kFloat32); }
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 0);
  EXPECT_EQ(before.sum().item<float>(), 499500.0f);
}

TEST(CpuAllocator, ResultsAreTheSameThroughTheCache) {
  use_caching_cpu_allocator(256 * kMiB);
  torch::manual_seed(3);
  const at::Tensor a = torch::randn({512, 1024});
  const at::Tensor b = torch::randn({1024, 600});
  const at::Tensor once = torch::mm(a, b);
  for (int i = 0; i < 3; ++i) {
    // Reused blocks hold the last product's bytes: the result must not depend on them.
    EXPECT_TRUE(torch::equal(torch::mm(a, b), once));
  }
}

}  // namespace
}  // namespace patchwise
