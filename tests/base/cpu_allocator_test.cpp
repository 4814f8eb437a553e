// The caching CPU allocator: large blocks come back from the cache, within the limit,
// freed blocks of any size serve blocks of another, and tensors computed through it are
// the same as through the C library's.

#include "patchwise/base/cpu_allocator.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <utility>
#include <vector>

namespace patchwise {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

TEST(CpuAllocator, LargeBlocksAreWholeMebibytes) {
  EXPECT_EQ(cpu_cache_size_class(1000), 1000);
  EXPECT_EQ(cpu_cache_size_class(kMiB - 1), kMiB - 1);
  for (int64_t bytes : {kMiB, kMiB + 1, 3 * kMiB + 12345, 700 * kMiB + 7}) {
    const int64_t cls = cpu_cache_size_class(bytes);
    EXPECT_GE(cls, bytes);
    EXPECT_LT(cls, bytes + kMiB) << bytes;
    EXPECT_EQ(cls % kMiB, 0) << bytes;
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

/// `mib` MiB of float32 holding `value`, through the cache.
at::Tensor filled(int64_t mib, float value) {
  return torch::full({mib * kMiB / 4}, value, torch::kFloat32);
}

/// `mib` MiB of float32, contents as the cache hands them out.
at::Tensor block(int64_t mib) { return torch::empty({mib * kMiB / 4}, torch::kFloat32); }

// A block of 8 MiB is made of two free ranges of 3 and 5 MiB that a block in use keeps
// apart: their pages, moved to a new place (new pages would read 0), and no more memory.
TEST(CpuAllocator, FreedBlocksOfOtherSizesMakeALargerOne) {
  use_caching_cpu_allocator(256 * kMiB);
  empty_cpu_cache();
  char* low = nullptr;
  { low = static_cast<char*>(filled(9, 7.0f).data_ptr()); }  // 9 MiB free, all 7
  at::Tensor apart;
  {
    const at::Tensor end = block(5);  // [4, 9) out, [0, 4) free
    apart = block(1);                 // [3, 4) out, [0, 3) free
    ASSERT_EQ(static_cast<char*>(apart.data_ptr()), low + 3 * kMiB);
  }  // [4, 9) free again: free ranges of 3 and 5 MiB
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 8 * kMiB);
  const CpuCacheStats start = cpu_cache_stats();
  const at::Tensor c = block(8);
  EXPECT_EQ(cpu_cache_stats().hits - start.hits, 1);
  EXPECT_EQ(cpu_cache_stats().misses, start.misses);
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 0);
  EXPECT_TRUE(torch::equal(c, torch::full_like(c, 7.0f)));
  char* at = static_cast<char*>(c.data_ptr());
  EXPECT_FALSE(at >= low && at < low + 9 * kMiB) << "a new place";
}

// A smaller block is cut from the end of a larger free one, and the two merge again
// when it is freed.
TEST(CpuAllocator, ASmallerBlockIsCutFromALargerFreeOneAndMergesBack) {
  use_caching_cpu_allocator(256 * kMiB);
  empty_cpu_cache();
  char* first = nullptr;
  {
    at::Tensor t = filled(8, 1.0f);
    first = static_cast<char*>(t.data_ptr());
  }
  {
    const at::Tensor part = filled(3, 2.0f);
    EXPECT_EQ(static_cast<char*>(part.data_ptr()), first + 5 * kMiB);
    EXPECT_EQ(cpu_cache_stats().cached_bytes, 5 * kMiB);
  }
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 8 * kMiB);
  const at::Tensor whole = torch::empty({8 * kMiB / 4}, torch::kFloat32);
  EXPECT_EQ(static_cast<char*>(whole.data_ptr()), first);
  EXPECT_EQ(whole.narrow(0, 5 * kMiB / 4, 1).item<float>(), 2.0f);
  EXPECT_EQ(whole.narrow(0, 0, 1).item<float>(), 1.0f);
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
