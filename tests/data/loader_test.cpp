#include "patchwise/data/loader.h"

#include <algorithm>
#include <memory>
#include <set>

#include "patchwise/data/image.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

/// A data set whose image i holds the value i in every pixel and label i % 10.
Dataset counting_dataset(int64_t n) {
  Dataset d;
  d.images = torch::arange(n, torch::kUInt8).view({n, 1, 1, 1}).expand({n, 1, 2, 2}).contiguous();
  d.labels = torch::arange(n, torch::kInt64) % 10;
  d.class_names = std::vector<std::string>(10, "c");
  return d;
}

class LoaderTest : public test::SeededTest {};

TEST_F(LoaderTest, VisitsEveryImageOncePerEpochWithMatchingLabels) {
  Dataset data = counting_dataset(103);
  Loader loader(data, 10, /*shuffle=*/true, /*seed=*/5);
  EXPECT_EQ(loader.num_batches(), 11);
  loader.start_epoch(0);
  std::multiset<int64_t> seen;
  int64_t batches = 0;
  for (Batch b; loader.next(b);) {
    ++batches;
    for (int64_t i = 0; i < b.images.size(0); ++i) {
      const int64_t id = b.images[i][0][0][0].item<int64_t>();
      EXPECT_EQ(b.labels[i].item<int64_t>(), id % 10);
      seen.insert(id);
    }
  }
  EXPECT_EQ(batches, 11);
  EXPECT_EQ(seen.size(), 103u);
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 103u);
}

TEST_F(LoaderTest, ALazySetGivesTheBatchesOfItsPackedCopy) {
  // The counting set written to PNG files and listed lazily.
  const Dataset packed = counting_dataset(23);
  Dataset lazy = packed;
  lazy.images = at::Tensor();
  lazy.files = {{}, 1, 2, 2};
  for (int64_t i = 0; i < packed.size(); ++i) {
    lazy.files.paths.push_back((dir_ / (std::to_string(i) + ".png")).string());
    write_image(lazy.files.paths.back(), packed.images[i]);
  }
  Loader a(packed, 5, /*shuffle=*/true, /*seed=*/3, /*shard=*/1, /*shards=*/2);
  Loader b(lazy, 5, /*shuffle=*/true, /*seed=*/3, /*shard=*/1, /*shards=*/2);
  a.start_epoch(2);
  b.start_epoch(2);
  int64_t batches = 0;
  for (Batch x, y; a.next(x);) {
    ASSERT_TRUE(b.next(y));
    EXPECT_TRUE(torch::equal(x.images, y.images));
    EXPECT_TRUE(torch::equal(x.labels, y.labels));
    ++batches;
  }
  EXPECT_EQ(batches, 5);
  Batch extra;
  EXPECT_FALSE(b.next(extra));
}

TEST_F(LoaderTest, OrderDependsOnlyOnSeedAndEpoch) {
  Dataset data = counting_dataset(50);
  Loader a(data, 8, true, 1), b(data, 8, true, 1), c(data, 8, true, 2);
  EXPECT_EQ(a.order(3), b.order(3));
  EXPECT_NE(a.order(3), a.order(4));
  EXPECT_NE(a.order(3), c.order(3));
}

TEST_F(LoaderTest, WithoutShuffleKeepsFileOrder) {
  Dataset data = counting_dataset(5);
  Loader loader(data, 2, /*shuffle=*/false, 0);
  loader.start_epoch(7);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.labels[0].item<int64_t>(), 0);
  EXPECT_EQ(b.labels[1].item<int64_t>(), 1);
}

TEST_F(LoaderTest, ShardsSplitEveryBatchLikeDistributedSampler) {
  // 3 shards of batches of 9 over 22 images: the last batch has 4 images, so shard 0
  // gets 2, shard 1 one and shard 2 one; interleaved they are one process's batches.
  Dataset data = counting_dataset(22);
  Loader whole(data, 9, /*shuffle=*/true, /*seed=*/11);
  std::vector<std::unique_ptr<Loader>> shards;
  for (int64_t r = 0; r < 3; ++r) {
    shards.push_back(std::make_unique<Loader>(data, 9, true, 11, r, 3));
    EXPECT_EQ(shards.back()->num_batches(), 3);
  }
  EXPECT_EQ(whole.batch_rows(0), 9);
  EXPECT_EQ(whole.batch_rows(2), 4);
  for (int64_t epoch : {0, 1}) {
    whole.start_epoch(epoch);
    for (auto& s : shards) s->start_epoch(epoch);
    for (Batch full; whole.next(full);) {
      std::vector<Batch> parts(3);
      for (size_t r = 0; r < 3; ++r) ASSERT_TRUE(shards[r]->next(parts[r]));
      for (int64_t i = 0; i < full.labels.size(0); ++i) {
        const Batch& part = parts[static_cast<size_t>(i % 3)];
        EXPECT_EQ(
            part.images[i / 3][0][0][0].item<int64_t>(), full.images[i][0][0][0].item<int64_t>());
        EXPECT_EQ(part.labels[i / 3].item<int64_t>(), full.labels[i].item<int64_t>());
      }
      int64_t total = 0;
      for (const Batch& part : parts) total += part.labels.size(0);
      EXPECT_EQ(total, full.labels.size(0));
    }
    Batch extra;
    for (auto& s : shards) EXPECT_FALSE(s->next(extra));
  }
}

TEST_F(LoaderTest, AShardCanBeEmptyInTheLastBatch) {
  Dataset data = counting_dataset(9);  // batches of 4: 4, 4, 1
  Loader last(data, 4, /*shuffle=*/false, 0, /*shard=*/1, /*shards=*/2);
  last.start_epoch(0);
  std::vector<int64_t> sizes;
  for (Batch b; last.next(b);) sizes.push_back(b.labels.size(0));
  EXPECT_EQ(sizes, (std::vector<int64_t>{2, 2, 0}));
}

}  // namespace
}  // namespace patchwise
