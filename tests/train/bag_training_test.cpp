// Training on bags of tiles: the loader's bags, tile selection, and learning from one
// label per image.

#include <numeric>

#include "patchwise/data/loader.h"
#include "patchwise/model/evaluation.h"
#include "patchwise/train/select.h"
#include "patchwise/train/trainer.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

constexpr int64_t kSide = 28;

/// Image i: a bag of 3 + i % 5 dark noise tiles; for label 1 one of them (at i % n)
/// holds a bright square. The label is only in that tile.
at::Tensor synthetic_bag(int64_t i, int64_t label) {
  const int64_t n = 3 + i % 5;
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 + i));
  at::Tensor tiles = torch::randint(0, 60, {n, 1, kSide, kSide}, gen, torch::kUInt8);
  if (label == 1) tiles[i % n].narrow(1, 8, 12).narrow(2, 8, 12).fill_(250);
  return tiles;
}

Dataset bag_set(int64_t size, int64_t offset) {
  Dataset d;
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < size; ++i) {
    d.files.paths.push_back("bag" + std::to_string(offset + i));
    labels.push_back((offset + i) % 2);
  }
  d.labels = torch::tensor(labels, torch::kInt64);
  d.class_names = {"empty", "square"};
  d.source = "bags";
  return d;
}

BagFn bags_of(int64_t offset) {
  return [offset](int64_t item) { return synthetic_bag(offset + item, (offset + item) % 2); };
}

ModelConfig tiled_config(FusionRule rule) {
  ModelConfig c;
  c.tiled = true;
  c.image_h = c.image_w = c.grid.input = kSide;
  c.grid.rows = c.grid.cols = 1;
  c.grid.patch_h = c.grid.patch_w = kSide;
  c.backbone.num_classes = 2;
  c.class_names = {"empty", "square"};
  c.normalization = {{0.15}, {0.2}};
  c.fusion = rule;
  return c;
}

class BagTrainingTest : public test::SeededTest {};

TEST_F(BagTrainingTest, TheLoaderHandsOutEachImagesBagWithItsLabel) {
  const Dataset data = bag_set(7, 0);
  Loader loader(data, 3, /*shuffle=*/true, 5, 0, 1, bags_of(0));
  loader.start_epoch(0);
  const std::vector<int64_t> order = loader.order(0);
  size_t seen = 0;
  for (Batch b; loader.next(b);) {
    int64_t row = 0;
    for (size_t i = 0; i < b.counts.size(); ++i, ++seen) {
      const int64_t item = order[seen];
      at::Tensor expected = synthetic_bag(item, item % 2);
      ASSERT_EQ(b.counts[i], expected.size(0));
      EXPECT_TRUE(torch::equal(b.images.narrow(0, row, b.counts[i]), expected));
      EXPECT_EQ(b.labels[static_cast<int64_t>(i)].item<int64_t>(), item % 2);
      row += b.counts[i];
    }
    EXPECT_EQ(row, b.images.size(0));
  }
  EXPECT_EQ(seen, 7u);
}

TEST_F(BagTrainingTest, SelectionKeepsTheBestScoredTilesOfEachBagInOrder) {
  PatchClassifier model(tiled_config(FusionRule::kMean));
  at::Tensor tiles = torch::cat({synthetic_bag(1, 1), synthetic_bag(2, 0)});
  const std::vector<int64_t> counts = {4, 5};
  Selection s = select_tiles(model, tiles, counts, 2);
  EXPECT_EQ(s.counts, (std::vector<int64_t>{2, 2}));
  // The scores by hand: each tile's top class probability, in evaluation mode, from the
  // padded pass over bags {4, 5} that select_tiles makes: the same operations, so the
  // ranks agree bit for bit (a pass over other shapes could round near ties apart).
  model->eval();
  torch::NoGradGuard no_grad;
  at::Tensor top =
      std::get<0>(torch::softmax(model->forward_bags(tiles, counts).patch_logits, 2).max(2));
  for (int64_t b = 0, start = 0; b < 2; start += counts[static_cast<size_t>(b)], ++b) {
    at::Tensor best = std::get<1>(top[b].narrow(0, 0, counts[static_cast<size_t>(b)]).topk(2));
    best = std::get<0>(best.sort()) + start;
    EXPECT_TRUE(torch::equal(s.rows.narrow(0, 2 * b, 2), best)) << "bag " << b;
  }
  EXPECT_TRUE(torch::equal(s.tiles, tiles.index_select(0, s.rows)));
  // A keep of at least every bag's size keeps everything as it is.
  Selection all = select_tiles(model, tiles, counts, 5);
  EXPECT_TRUE(torch::equal(all.tiles, tiles));
  EXPECT_EQ(all.counts, counts);
}

TEST_F(BagTrainingTest, GatedAttentionLearnsFromImageLabelsAndSelectionAtBagSizeChangesNothing) {
  const Dataset train = bag_set(160, 0);
  const Dataset test = bag_set(60, 1000);
  TrainerOptions options;
  options.epochs = 4;
  options.batch = 8;
  options.loss = LossKind::kFused;
  options.bags = bags_of(0);
  options.eval_bags = bags_of(1000);
  auto run = [&](int64_t select) {
    torch::manual_seed(3);
    PatchClassifier model(tiled_config(FusionRule::kGatedAttention));
    TrainerOptions o = options;
    o.select = select;
    TrainResult r = train_model(model, train, &test, o);
    return std::make_pair(r.history.back().test_accuracy, model);
  };
  auto [accuracy, model] = run(0);
  // Not a rounding bound: chance is 0.5 on 60 bags, and the bright square is plain to see;
  // above 0.95 allows two errors in 60.
  EXPECT_GT(accuracy, 0.95);
  auto [same_accuracy, same_model] = run(7);  // 7: the largest bag
  // select_tiles keeps every bag whole without scoring it, so the two runs make the same
  // operations on the same data in one process: equal bit for bit.
  EXPECT_EQ(same_accuracy, accuracy);
  auto a = model->parameters();
  auto b = same_model->parameters();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i]));
  // And with the two best tiles of each bag only, it still finds the square (chance: 0.5).
  EXPECT_GT(run(2).first, 0.9);
}

}  // namespace
}  // namespace patchwise
