#include "patchwise/base/cpu_allocator.h"

#include <c10/core/CPUAllocator.h>
#include <fmt/format.h>
#include <sys/mman.h>

#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <unordered_map>
#include <utility>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"

namespace patchwise {
namespace {

constexpr size_t kAlignment = 64;           ///< small blocks, as LibTorch's own allocator
constexpr size_t kChunk = size_t{1} << 20;  ///< large blocks are whole chunks of pages

size_t chunks_for(size_t bytes) { return (bytes + kChunk - 1) / kChunk; }

/// `n` chunks of pages from `from` to `to`, moved by the kernel (no copy, no zeroing). A
/// range that spans several mappings moves chunk by chunk: each lies within one, as
/// every mapping here is whole chunks at whole-chunk offsets.
void move_chunks(char* from, char* to, size_t n) {
  const int flags = MREMAP_MAYMOVE | MREMAP_FIXED;
  if (mremap(from, n * kChunk, n * kChunk, flags, to) != MAP_FAILED) return;
  for (size_t i = 0; i < n; ++i) {
    char* source = from + i * kChunk;
    if (mremap(source, kChunk, kChunk, flags, to + i * kChunk) == MAP_FAILED) {
      munmap(source, kChunk);  // the fresh pages at the target stay
    }
  }
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) const override {
    void* data = n >= kChunk ? take(chunks_for(n)) : small(n);
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  size_t limit() const {
    std::lock_guard<std::mutex> guard(lock_);
    return limit_;
  }

  static CachingCpuAllocator& instance() {
    static auto* allocator = new CachingCpuAllocator();  // lives as long as any tensor
    return *allocator;
  }

  void set_limit(size_t limit) {
    std::lock_guard<std::mutex> guard(lock_);
    limit_ = limit;
    trim(limit_);
  }
  void empty() {
    std::lock_guard<std::mutex> guard(lock_);
    trim(0);
  }
  CpuCacheStats stats() const {
    std::lock_guard<std::mutex> guard(lock_);
    return {hits_, misses_, static_cast<int64_t>(cached_)};
  }

 private:
  static void* small(size_t n) {
    void* data = nullptr;
    if (posix_memalign(&data, kAlignment, std::max<size_t>(n, 1)) != 0) throw std::bad_alloc();
    return data;
  }

  /// `chunks` chunks: the end of the smallest free range that holds them; else a fresh
  /// mapping whose chunks are replaced, as far as the free ranges reach, by theirs.
  void* take(size_t chunks) const {
    {
      std::lock_guard<std::mutex> guard(lock_);
      const auto fit = by_size_.lower_bound({chunks, nullptr});
      if (fit != by_size_.end()) {
        char* block = take_end(fit->second, chunks);
        ++hits_;
        in_use_[block] = chunks;
        return block;
      }
    }
    void* fresh =
        mmap(nullptr, chunks * kChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fresh == MAP_FAILED) throw std::bad_alloc();
    char* block = static_cast<char*>(fresh);
    std::lock_guard<std::mutex> guard(lock_);
    size_t filled = 0;
    while (filled < chunks && !by_size_.empty()) {
      const auto largest = std::prev(by_size_.end());
      const size_t n = std::min(largest->first, chunks - filled);
      move_chunks(take_end(largest->second, n), block + filled * kChunk, n);
      filled += n;
    }
    ++(filled == chunks ? hits_ : misses_);
    in_use_[block] = chunks;
    return block;
  }

  static void release(void* data) {
    if (data != nullptr) instance().give_back(data);
  }

  /// A large block's chunks join the free ranges within the limit, else the kernel's.
  void give_back(void* data) {
    std::unique_lock<std::mutex> guard(lock_);
    const auto found = in_use_.find(data);
    if (found == in_use_.end()) {
      guard.unlock();
      std::free(data);
      return;
    }
    const size_t chunks = found->second;
    in_use_.erase(found);
    if (cached_ + chunks * kChunk <= limit_) {
      add_free(static_cast<char*>(data), chunks);
    } else {
      munmap(data, chunks * kChunk);
    }
  }

  /// Files a free range, merged with the free ranges just before and after it.
  void add_free(char* start, size_t chunks) const {
    const auto next = by_address_.lower_bound(start);
    if (next != by_address_.end() && next->first == start + chunks * kChunk) {
      chunks += next->second;
      remove_free(next->first);
    }
    const auto after = by_address_.lower_bound(start);
    if (after != by_address_.begin()) {
      const auto before = std::prev(after);
      if (before->first + before->second * kChunk == start) {
        start = before->first;
        chunks += before->second;
        remove_free(start);
      }
    }
    by_address_[start] = chunks;
    by_size_.insert({chunks, start});
    cached_ += chunks * kChunk;
  }

  /// Takes the free range at `start` off the lists.
  void remove_free(char* start) const {
    const auto it = by_address_.find(start);
    by_size_.erase({it->second, start});
    cached_ -= it->second * kChunk;
    by_address_.erase(it);
  }

  /// The last `n` chunks of the free range at `start`; the rest of it stays free.
  char* take_end(char* start, size_t n) const {
    const size_t chunks = by_address_.at(start);
    remove_free(start);
    if (chunks > n) add_free(start, chunks - n);
    return start + (chunks - n) * kChunk;
  }

  /// Unmaps the largest free ranges until at most `bytes` are held (lock held).
  void trim(size_t bytes) {
    while (!by_size_.empty() && cached_ > bytes) {
      const auto [chunks, start] = *std::prev(by_size_.end());
      remove_free(start);
      munmap(start, chunks * kChunk);
    }
  }

  mutable std::mutex lock_;
  mutable std::map<char*, size_t> by_address_;          ///< free ranges: start -> chunks
  mutable std::set<std::pair<size_t, char*>> by_size_;  ///< the same by size
  mutable std::unordered_map<void*, size_t> in_use_;    ///< large blocks out: chunks
  mutable size_t cached_ = 0;
  mutable int64_t hits_ = 0;
  mutable int64_t misses_ = 0;
  size_t limit_ = 0;
};

}  // namespace

void use_caching_cpu_allocator(int64_t limit_bytes) {
  static std::once_flag installed;
  CachingCpuAllocator& allocator = CachingCpuAllocator::instance();
  allocator.set_limit(static_cast<size_t>(std::max<int64_t>(limit_bytes, 0)));
  std::call_once(installed, [&] { c10::SetCPUAllocator(&allocator, /*priority=*/1); });
}

void use_cpu_allocator_from_environment(int64_t limit_bytes) {
  const char* env = std::getenv(kCpuAllocatorVariable);
  const std::string choice = env == nullptr || *env == '\0' ? "caching" : env;
  check_input(
      choice == "caching" || choice == "system",
      "{}: '{}', expected caching (patchwise's, the default) or system (LibTorch's own)",
      kCpuAllocatorVariable,
      printable(choice));
  if (choice == "caching") use_caching_cpu_allocator(limit_bytes);
}

std::string cpu_allocator_description() {
  CachingCpuAllocator& caching = CachingCpuAllocator::instance();
  if (c10::GetCPUAllocator() != &caching) {
    return fmt::format("LibTorch's own (set {}=caching for patchwise's)", kCpuAllocatorVariable);
  }
  return fmt::format(
      "patchwise's caching allocator, keeping at most {} MiB free (set {}=system for "
      "LibTorch's own)",
      caching.limit() >> 20,
      kCpuAllocatorVariable);
}

void empty_cpu_cache() { CachingCpuAllocator::instance().empty(); }

CpuCacheStats cpu_cache_stats() { return CachingCpuAllocator::instance().stats(); }

int64_t cpu_cache_size_class(int64_t bytes) {
  const auto n = static_cast<size_t>(std::max<int64_t>(bytes, 1));
  return static_cast<int64_t>(n >= kChunk ? chunks_for(n) * kChunk : n);
}

}  // namespace patchwise
