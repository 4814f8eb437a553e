#include "patchwise/data/loader.h"

#include <algorithm>
#include <set>

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

}  // namespace
}  // namespace patchwise
