#include "patchwise/core/cpu_allocator.h"

#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

namespace patchwise {
namespace {

constexpr size_t kAlignment = 64;  ///< as LibTorch's own CPU allocator
constexpr size_t kHeader = 64;     ///< before each block: its size class (keeps alignment)
constexpr size_t kMinCached = size_t{1} << 20;

size_t size_class(size_t bytes) {
  if (bytes < kMinCached) return bytes;
  size_t top = size_t{1} << (63 - __builtin_clzll(bytes));
  const size_t step = top / 8;
  return (bytes + step - 1) / step * step;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) const override {
    void* data = take(size_class(std::max<size_t>(n, 1)));
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  static CachingCpuAllocator& instance() {
    static auto* allocator = new CachingCpuAllocator();  // lives as long as any tensor
    return *allocator;
  }

  void set_limit(size_t limit) {
    std::lock_guard<std::mutex> guard(lock_);
    limit_ = limit;
    trim();
  }
  void empty() {
    std::lock_guard<std::mutex> guard(lock_);
    const size_t limit = limit_;
    limit_ = 0;
    trim();
    limit_ = limit;
  }
  CpuCacheStats stats() const {
    std::lock_guard<std::mutex> guard(lock_);
    return {hits_, misses_, static_cast<int64_t>(cached_)};
  }

 private:
  /// A block of `cls` bytes (a size class) after its header.
  void* take(size_t cls) const {
    if (cls >= kMinCached) {
      std::lock_guard<std::mutex> guard(lock_);
      auto found = free_.find(cls);
      if (found != free_.end() && !found->second.empty()) {
        void* block = found->second.back();
        found->second.pop_back();
        cached_ -= cls;
        ++hits_;
        return block;
      }
      ++misses_;
    }
    void* base = nullptr;
    if (posix_memalign(&base, kAlignment, cls + kHeader) != 0) throw std::bad_alloc();
    *static_cast<size_t*>(base) = cls;
    return static_cast<char*>(base) + kHeader;
  }

  static void release(void* data) {
    if (data == nullptr) return;
    void* base = static_cast<char*>(data) - kHeader;
    const size_t cls = *static_cast<size_t*>(base);
    if (cls >= kMinCached && instance().keep(data, cls)) return;
    std::free(base);
  }

  bool keep(void* data, size_t cls) {
    std::lock_guard<std::mutex> guard(lock_);
    if (cached_ + cls > limit_) return false;
    free_[cls].push_back(data);
    cached_ += cls;
    return true;
  }

  /// Frees the largest blocks until the cache holds at most limit_ (lock held).
  void trim() {
    for (auto it = free_.rbegin(); it != free_.rend() && cached_ > limit_; ++it) {
      while (!it->second.empty() && cached_ > limit_) {
        std::free(static_cast<char*>(it->second.back()) - kHeader);
        it->second.pop_back();
        cached_ -= it->first;
      }
    }
  }

  mutable std::mutex lock_;
  mutable std::map<size_t, std::vector<void*>> free_;
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

void empty_cpu_cache() { CachingCpuAllocator::instance().empty(); }

CpuCacheStats cpu_cache_stats() { return CachingCpuAllocator::instance().stats(); }

int64_t cpu_cache_size_class(int64_t bytes) {
  return static_cast<int64_t>(size_class(static_cast<size_t>(std::max<int64_t>(bytes, 1))));
}

}  // namespace patchwise
