#pragma once
// TileStream: the tiles of one image read and resized ahead of the compute.
//
// Worker threads take batches of tile boxes in order, read each tile at its level
// (RegionReader::read), resize it to output x output (area averaging when shrinking,
// bilinear when enlarging) and hand the batch over; at most `depth` batches wait
// ahead of the consumer, so peak memory is about (depth + workers) batches of
// output-sized tiles plus one tile read per worker: it depends on the tile size, the
// batch and the depth, never on the image's size. Batches come out in box order.

#include <ATen/core/Tensor.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "patchwise/data/region.h"

namespace patchwise {

struct TileStreamOptions {
  int64_t output = 32;  ///< side of the square tiles handed out
  int64_t batch = 64;   ///< tiles per batch
  int64_t workers = 2;  ///< reading threads
  int64_t depth = 4;    ///< batches read ahead at most
};

struct TileBatch {
  at::Tensor tiles;   ///< uint8 [b,C,output,output]
  int64_t first = 0;  ///< position of its first tile in the box list
};

class TileStream {
 public:
  /// `reader` must outlive the stream. Starts reading at once.
  TileStream(
      const RegionReader& reader, int level, std::vector<Box> boxes,
      const TileStreamOptions& options);
  ~TileStream();
  TileStream(const TileStream&) = delete;
  TileStream& operator=(const TileStream&) = delete;

  /// The next batch in order; false when all were handed out. Rethrows a worker's error.
  bool next(TileBatch& out);
  int64_t num_batches() const { return batches_; }

 private:
  void work();
  TileBatch read_batch(int64_t index) const;

  const RegionReader& reader_;
  int level_;
  std::vector<Box> boxes_;
  TileStreamOptions options_;
  int64_t batches_ = 0;

  std::mutex mutex_;
  std::condition_variable ready_;  // a batch arrived, or an error
  std::condition_variable space_;  // the consumer took a batch, or the stream stops
  int64_t claimed_ = 0;            // batches taken by workers
  int64_t consumed_ = 0;           // batches handed out
  bool stopping_ = false;
  std::map<int64_t, TileBatch> done_;
  std::exception_ptr error_;
  std::vector<std::thread> threads_;
};

}  // namespace patchwise
