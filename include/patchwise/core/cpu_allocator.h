#pragma once
// A caching CPU allocator for LibTorch. Training on bags allocates the same few large
// activation buffers (hundreds of MB for a batch of bags) every step; glibc hands such
// blocks to mmap and back to the kernel on free, so each step page-faults and zeroes
// them again (half the wall time of a training step on bags went to the kernel). This
// allocator keeps freed blocks of at least 1 MiB, by size class (sizes are rounded up
// by at most 1/8), and hands them out again, holding at most a set number of bytes
// free. Smaller blocks go straight to the C library.

#include <cstdint>

namespace patchwise {

/// What the command line and the benchmarks keep free at most; nothing under
/// AddressSanitizer, so that it sees every free.
#if defined(__SANITIZE_ADDRESS__)
constexpr int64_t kDefaultCpuCacheBytes = 0;
#else
constexpr int64_t kDefaultCpuCacheBytes = int64_t{2} << 30;
#endif

struct CpuCacheStats {
  int64_t hits = 0;          ///< large allocations served from the cache
  int64_t misses = 0;        ///< large allocations that went to the C library
  int64_t cached_bytes = 0;  ///< bytes held free now
};

/// Makes the caching allocator LibTorch's CPU allocator, keeping at most `limit_bytes`
/// free (later calls only change the limit). Tensors allocated before stay valid.
void use_caching_cpu_allocator(int64_t limit_bytes);

/// Frees every cached block (the limit stays).
void empty_cpu_cache();

CpuCacheStats cpu_cache_stats();

/// The size class a request of `bytes` is served from (exposed for tests).
int64_t cpu_cache_size_class(int64_t bytes);

}  // namespace patchwise
