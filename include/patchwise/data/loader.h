#pragma once
// Loader: shuffled mini-batches of a Dataset, the next one gathered on a worker
// thread while the current one trains. The order of each epoch depends only on
// (seed, epoch), so a run is reproducible. In data-parallel training each of
// `shards` processes takes, of every batch, the positions shard, shard+shards, ...
// (DistributedSampler's rule applied per batch): together they train on exactly the
// batches one process would.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <future>
#include <vector>

#include "patchwise/data/dataset.h"

namespace patchwise {

struct Batch {
  at::Tensor images;            ///< uint8 [b,C,H,W]; with bags, the tiles [N,C,I,I]
  at::Tensor labels;            ///< int64 [b]
  std::vector<int64_t> counts;  ///< with bags: image i's tiles, in order (sum N); else empty
};

/// Item i's bag of tiles, uint8 [n,C,I,I] with n >= 1 (patch/bags.h makes one), or of
/// their backbone features, float [n,F] (patch/feature_cache.h). Called on the loader's
/// thread.
using BagFn = std::function<at::Tensor(int64_t item)>;

class Loader {
 public:
  /// `data` must outlive the loader. batch_size >= 1; 0 <= shard < shards.
  /// With `bags`, a batch holds its images' bags of tiles instead of their pixels.
  Loader(
      const Dataset& data, int64_t batch_size, bool shuffle, uint64_t seed, int64_t shard = 0,
      int64_t shards = 1, BagFn bags = {});
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  /// Starts a pass over the data in the order of `epoch`, from batch `first_batch`
  /// (a resumed run skips the batches it already trained on).
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  /// The next batch of the pass; false when the pass is over.
  bool next(Batch& out);
  /// Batches per pass: ceil(N / batch_size).
  int64_t num_batches() const;
  /// Images in batch `batch_index` over all shards: batch_size, less in the last batch.
  int64_t batch_rows(int64_t batch_index) const;
  /// The order of `epoch` (a permutation of 0..N-1, or the identity without shuffle).
  std::vector<int64_t> order(int64_t epoch) const;

 private:
  Batch gather(int64_t batch_index) const;
  Batch gather_bags(const std::vector<int64_t>& items) const;

  const Dataset& data_;
  int64_t batch_size_;
  bool shuffle_;
  uint64_t seed_;
  int64_t shard_;
  int64_t shards_;
  BagFn bags_;
  std::vector<int64_t> order_;
  int64_t next_batch_ = 0;
  std::future<Batch> pending_;
};

}  // namespace patchwise
