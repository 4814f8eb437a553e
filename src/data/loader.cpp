#include "patchwise/data/loader.h"

#include <algorithm>
#include <numeric>
#include <random>

#include <torch/torch.h>

namespace patchwise {

Loader::Loader(const Dataset& data, int64_t batch_size, bool shuffle, uint64_t seed)
    : data_(data), batch_size_(batch_size), shuffle_(shuffle), seed_(seed) {
  TORCH_CHECK(batch_size >= 1, "Loader: batch size ", batch_size, ", expected >= 1");
}

Loader::~Loader() {
  if (pending_.valid()) pending_.wait();
}

std::vector<int64_t> Loader::order(int64_t epoch) const {
  std::vector<int64_t> order(static_cast<size_t>(data_.size()));
  std::iota(order.begin(), order.end(), 0);
  if (shuffle_) {
    // splitmix-style mixing keeps neighbouring (seed, epoch) pairs unrelated.
    std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch));
    std::shuffle(order.begin(), order.end(), rng);
  }
  return order;
}

int64_t Loader::num_batches() const { return (data_.size() + batch_size_ - 1) / batch_size_; }

Batch Loader::gather(int64_t batch_index) const {
  const int64_t begin = batch_index * batch_size_;
  const int64_t count = std::min(batch_size_, data_.size() - begin);
  at::Tensor index =
      torch::from_blob(const_cast<int64_t*>(order_.data() + begin), {count}, torch::kInt64);
  return Batch{data_.images.index_select(0, index), data_.labels.index_select(0, index)};
}

void Loader::start_epoch(int64_t epoch) {
  if (pending_.valid()) pending_.wait();
  order_ = order(epoch);
  next_batch_ = 0;
  if (num_batches() > 0) pending_ = std::async(std::launch::async, &Loader::gather, this, 0);
}

bool Loader::next(Batch& out) {
  if (!pending_.valid()) return false;
  out = pending_.get();
  ++next_batch_;
  if (next_batch_ < num_batches()) {
    pending_ = std::async(std::launch::async, &Loader::gather, this, next_batch_);
  }
  return true;
}

}  // namespace patchwise
