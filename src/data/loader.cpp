#include "patchwise/data/loader.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

namespace patchwise {

Loader::Loader(
    const Dataset& data, int64_t batch_size, bool shuffle, uint64_t seed, int64_t shard,
    int64_t shards, BagFn bags)
    : data_(data),
      batch_size_(batch_size),
      shuffle_(shuffle),
      seed_(seed),
      shard_(shard),
      shards_(shards),
      bags_(std::move(bags)) {
  TORCH_CHECK(batch_size >= 1, "Loader: batch size ", batch_size, ", expected >= 1");
  TORCH_CHECK(
      shards >= 1 && shard >= 0 && shard < shards,
      "Loader: shard ",
      shard,
      " of ",
      shards,
      ", expected 0 <= shard < shards");
  TORCH_CHECK(
      (!data.in_memory() ||
       (data.images.is_contiguous() && data.images.scalar_type() == torch::kUInt8)) &&
          data.labels.is_contiguous() && data.labels.scalar_type() == torch::kInt64,
      "Loader: expects contiguous uint8 images and int64 labels");
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

int64_t Loader::batch_rows(int64_t batch_index) const {
  return std::clamp<int64_t>(data_.size() - batch_index * batch_size_, 0, batch_size_);
}

Batch Loader::gather(int64_t batch_index) const {
  // Plain copies (or, for a lazy set, decodes), no LibTorch operators: a parallel
  // operator on this worker thread would start a second OpenMP team whose spinning
  // threads steal the cores that the training step on the main thread is using.
  // This shard's positions of the batch: begin + shard, begin + shard + shards, ...
  const int64_t begin = batch_index * batch_size_ + shard_;
  const int64_t rows = batch_rows(batch_index);
  const int64_t count = rows > shard_ ? (rows - shard_ + shards_ - 1) / shards_ : 0;
  if (bags_) {
    std::vector<int64_t> items;
    for (int64_t i = 0; i < count; ++i)
      items.push_back(order_[static_cast<size_t>(begin + i * shards_)]);
    return gather_bags(items);
  }
  const int64_t image_bytes = data_.channels() * data_.height() * data_.width();
  Batch batch{
      torch::empty({count, data_.channels(), data_.height(), data_.width()}, torch::kUInt8),
      torch::empty({count}, torch::kInt64),
      {}};
  const int64_t* labels = data_.labels.data_ptr<int64_t>();
  uint8_t* dst = batch.images.data_ptr<uint8_t>();
  int64_t* dst_labels = batch.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t item = order_[static_cast<size_t>(begin + i * shards_)];
    data_.copy_image(item, dst + i * image_bytes);
    dst_labels[i] = labels[item];
  }
  return batch;
}

Batch Loader::gather_bags(const std::vector<int64_t>& items) const {
  std::vector<at::Tensor> bags;
  Batch batch;
  batch.labels = torch::empty({static_cast<int64_t>(items.size())}, torch::kInt64);
  int64_t total = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    bags.push_back(bags_(items[i]));
    TORCH_CHECK(
        (bags.back().dim() == 4 || bags.back().dim() == 2) && bags.back().size(0) >= 1 &&
            bags.back().sizes().slice(1) == bags.front().sizes().slice(1) &&
            bags.back().scalar_type() == bags.front().scalar_type(),
        "Loader: bag ",
        items[i],
        " is ",
        bags.back().sizes(),
        " of ",
        bags.back().scalar_type(),
        ", expected [n>=1,C,I,I] or [n>=1,F] like the first");
    batch.counts.push_back(bags.back().size(0));
    batch.labels.data_ptr<int64_t>()[i] = data_.labels.data_ptr<int64_t>()[items[i]];
    total += bags.back().size(0);
  }
  if (bags.empty()) {
    batch.images = torch::empty({0}, torch::kUInt8);
    return batch;
  }
  std::vector<int64_t> shape = bags.front().sizes().vec();
  shape[0] = total;
  // Copies, no operator (see gather). Tiles are uint8; a feature cache's bags are floats.
  batch.images = torch::empty(shape, bags.front().options());
  auto* dst = static_cast<char*>(batch.images.data_ptr());
  for (const at::Tensor& bag : bags) {
    const at::Tensor b = bag.contiguous();
    const size_t bytes = static_cast<size_t>(b.numel()) * b.element_size();
    std::memcpy(dst, b.data_ptr(), bytes);
    dst += bytes;
  }
  return batch;
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) {
  if (pending_.valid()) pending_.wait();
  order_ = order(epoch);
  next_batch_ = first_batch;
  if (next_batch_ < num_batches()) {
    pending_ = std::async(std::launch::async, &Loader::gather, this, next_batch_);
  }
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
