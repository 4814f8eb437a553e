#pragma once
// A cache of at most a set number of entries, shared between threads: what is made once
// per key and kept (oneDNN's primitives by shape, models/ src/models/blocked_*.cpp). When
// full, making a new entry drops the least recently used one; callers hold the shared
// pointer while they use an entry, so one dropped meanwhile lives on until they are done.
// A server meeting ever new batch shapes would otherwise grow without bound.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

namespace patchwise {

template <typename Key, typename Value>
class BoundedCache {
 public:
  explicit BoundedCache(size_t capacity) : capacity_(capacity > 0 ? capacity : 1) {}

  /// The entry of `key`, made by `make()` (returning a std::unique_ptr<Value>) when it is
  /// absent, under the cache's lock: one thread makes it, the others wait and share it.
  template <typename Make>
  std::shared_ptr<Value> get(const Key& key, Make&& make) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      std::shared_ptr<Value> value(make());
      if (entries_.size() >= capacity_) drop_least_recent();
      it = entries_.emplace(key, Entry{std::move(value), 0}).first;
    }
    it->second.used = ++clock_;
    return it->second.value;
  }

  /// Entries held now (at most the capacity).
  size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

  size_t capacity() const { return capacity_; }

 private:
  struct Entry {
    std::shared_ptr<Value> value;
    uint64_t used;  ///< when it was last asked for, by the cache's clock
  };

  void drop_least_recent() {
    auto oldest = entries_.begin();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->second.used < oldest->second.used) oldest = it;
    }
    entries_.erase(oldest);
  }

  const size_t capacity_;
  mutable std::mutex mutex_;
  std::map<Key, Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace patchwise
