#pragma once
// A caching CPU allocator for LibTorch. Training allocates the same large activation
// buffers (hundreds of MB for a batch of bags or of ResNet patches) every step; glibc
// hands such blocks to mmap and back to the kernel on free, so each step page-faults and
// zeroes them again (half the wall time of a training step on bags went to the kernel).
// This allocator maps blocks of at least 1 MiB itself, as whole chunks of 1 MiB, and
// keeps freed ones as free ranges, holding at most a set number of bytes. A request
// takes the end of the smallest free range that holds it (freed neighbours merge again);
// when none does, it gets a fresh mapping into which the kernel moves the free ranges'
// pages (mremap: no copy, no zeroing). So freed blocks of any size serve later ones of
// any other, and the cache adds little to the process's peak: a backward pass frees
// small layers' blocks and asks for large ones, and a cache by size kept both (ResNet-18
// training: 2,090 MiB at the peak against 1,700 now). Smaller blocks go straight to the
// C library.

#include <cstdint>
#include <string>

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

/// The environment variable that chooses the CPU allocator: "caching" (the default) or
/// "system", LibTorch's own, for bisecting a memory problem.
constexpr const char* kCpuAllocatorVariable = "PATCHWISE_CPU_ALLOCATOR";

/// What the command line and the benchmarks call first: the caching allocator with
/// `limit_bytes`, unless kCpuAllocatorVariable says "system"; InputError naming the
/// variable, its value and the choices on another value.
void use_cpu_allocator_from_environment(int64_t limit_bytes);

/// One line on the CPU allocator in use (for --version).
std::string cpu_allocator_description();

/// Frees every cached block (the limit stays).
void empty_cpu_cache();

CpuCacheStats cpu_cache_stats();

/// The bytes a request of `bytes` is served with: whole chunks of 1 MiB from 1 MiB on
/// (exposed for tests).
int64_t cpu_cache_size_class(int64_t bytes);

}  // namespace patchwise
