#include "patchwise/patch/tile_stream.h"

#include <torch/torch.h>

#include "patchwise/base/error.h"

namespace patchwise {

TileStream::TileStream(
    const RegionReader& reader, int level, std::vector<Box> boxes, const TileStreamOptions& options)
    : reader_(reader), level_(level), boxes_(std::move(boxes)), options_(options) {
  check_input(
      options.output > 0, "tile output size {}, expected a positive number", options.output);
  check_input(options.batch > 0, "tile batch {}, expected a positive number", options.batch);
  check_input(
      options.workers > 0 && options.depth > 0,
      "tile stream of {} workers and depth {}, expected positive numbers",
      options.workers,
      options.depth);
  const auto n = static_cast<int64_t>(boxes_.size());
  batches_ = (n + options.batch - 1) / options.batch;
  const int64_t workers = std::min(options.workers, std::max<int64_t>(1, batches_));
  for (int64_t i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
}

TileStream::~TileStream() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  space_.notify_all();
  for (auto& t : threads_) t.join();
}

TileBatch TileStream::read_batch(int64_t index) const {
  const int64_t first = index * options_.batch;
  const int64_t count =
      std::min<int64_t>(options_.batch, static_cast<int64_t>(boxes_.size()) - first);
  const int64_t s = options_.output;
  TileBatch batch;
  batch.first = first;
  batch.tiles = torch::empty({count, reader_.channels(), s, s}, torch::kUInt8);
  for (int64_t i = 0; i < count; ++i) {
    batch.tiles[i].copy_(reader_.read_resized(boxes_[static_cast<size_t>(first + i)], level_, s));
  }
  return batch;
}

void TileStream::work() {
  for (;;) {
    int64_t index = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // Wait until the next batch is within `depth` of the consumer.
      space_.wait(lock, [&] {
        return stopping_ || error_ || claimed_ >= batches_ || claimed_ < consumed_ + options_.depth;
      });
      if (stopping_ || error_ || claimed_ >= batches_) return;
      index = claimed_++;
    }
    try {
      TileBatch batch = read_batch(index);
      std::lock_guard<std::mutex> lock(mutex_);
      done_.emplace(index, std::move(batch));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    ready_.notify_all();
  }
}

bool TileStream::next(TileBatch& out) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (consumed_ >= batches_) return false;
  ready_.wait(lock, [&] { return error_ || done_.count(consumed_) > 0; });
  if (done_.count(consumed_) == 0) std::rethrow_exception(error_);
  auto it = done_.find(consumed_);
  out = std::move(it->second);
  done_.erase(it);
  ++consumed_;
  lock.unlock();
  space_.notify_all();
  return true;
}

}  // namespace patchwise
