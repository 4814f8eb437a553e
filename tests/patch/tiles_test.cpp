// Tiles: the lattice's stride rule at the borders, the level choice, the background
// filter on images of known foreground, and the streaming reader.

#include "patchwise/patch/tiles.h"

#include <gmock/gmock.h>
#include <torch/torch.h>

#include <set>

#include "patchwise/base/error.h"
#include "patchwise/data/image.h"
#include "patchwise/patch/tile_stream.h"
#include "patchwise/report/tile_sheet.h"
#include "support/slide_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using test::input_error;

TEST(TileLatticeTest, OffsetsFollowTheValidRuleAtTheBorders) {
  EXPECT_THAT(tile_offsets(10, 4, 3), ElementsAre(0, 3, 6));  // 6 + 4 = 10: flush
  EXPECT_THAT(tile_offsets(11, 4, 3), ElementsAre(0, 3, 6));  // the last pixel uncovered
  EXPECT_THAT(tile_offsets(10, 4, 4), ElementsAre(0, 4));     // 8 + 4 > 10
  EXPECT_THAT(tile_offsets(4, 4, 1), ElementsAre(0));         // one tile, the whole side
  EXPECT_THAT(tile_offsets(10, 2, 5), ElementsAre(0, 5));     // gaps between tiles
  const std::vector<Box> boxes = tile_lattice(7, 5, 3, 2);    // x 0,2,4; y 0,2
  ASSERT_EQ(boxes.size(), 6u);
  EXPECT_EQ(boxes[0], (Box{0, 0, 3, 3}));
  EXPECT_EQ(boxes[2], (Box{4, 0, 3, 3}));  // row-major
  EXPECT_EQ(boxes[3], (Box{0, 2, 3, 3}));
  EXPECT_EQ(boxes[5], (Box{4, 2, 3, 3}));
  for (const Box& b : tile_lattice(1000, 700, 64, 48)) {
    EXPECT_LE(b.x + b.w, 1000);
    EXPECT_LE(b.y + b.h, 700);
    EXPECT_EQ(b.x % 48, 0);
  }
  EXPECT_THAT(
      input_error([] { tile_lattice(100, 50, 64, 64); }),
      HasSubstr("tile 64, expected at most the image's 100x50"));
  EXPECT_THAT(input_error([] { tile_lattice(100, 50, 8, 0); }), HasSubstr("stride 0"));
}

TEST(TileLevelTest, ALevelOrTheNearestMppOrAClearError) {
  auto memory = memory_region_reader(torch::zeros({1, 64, 64}, torch::kUInt8), "canvas.png");
  TileOptions options;
  EXPECT_EQ(choose_level(*memory, options), 0);
  options.level = 2;
  EXPECT_THAT(
      input_error([&] { choose_level(*memory, options); }),
      HasSubstr("canvas.png: level 2, expected 0..0 (the image has 1 level)"));
  options.level = -1;
  options.mpp = 0.5;
  EXPECT_THAT(
      input_error([&] { choose_level(*memory, options); }),
      HasSubstr("canvas.png: mpp 0.5 asked, but the file states no microns per pixel"));
}

class TilesTest : public test::SeededTest {};

TEST_F(TilesTest, TheMppPicksTheNearestLevel) {
  write_pyramid_tiff(path("slide.tif"), test::synthetic_slide(), {256, 0.25});
  auto reader = open_region_reader(path("slide.tif"));
  TileOptions options;
  for (const auto& [mpp, level] : std::vector<std::pair<double, int>>{
           {0.25, 0}, {0.3, 0}, {0.5, 1}, {0.9, 2}, {1.0, 2}, {100.0, -1}}) {
    options.mpp = mpp;
    const int expected = level >= 0 ? level : static_cast<int>(reader->levels().size()) - 1;
    EXPECT_EQ(choose_level(*reader, options), expected) << mpp;
  }
}

TEST_F(TilesTest, TheMaskFindsTheKnownForegroundOfAColourSlide) {
  write_pyramid_tiff(path("slide.tif"), test::synthetic_slide());
  auto reader = open_region_reader(path("slide.tif"));
  TileOptions options;
  options.tile = 256;
  options.min_foreground = 0.75;
  const TilePlan plan = plan_tiles(*reader, options);
  EXPECT_EQ(plan.mask.channel, "saturation");
  EXPECT_TRUE(plan.mask.foreground_high);
  ASSERT_EQ(plan.boxes.size(), 8u * 6u);
  // Expected fractions from the squares' geometry (slide_support.h).
  std::map<std::pair<int, int>, double> truth = {
      {{1, 1}, 1},
      {{2, 1}, 1},
      {{1, 2}, 1},
      {{2, 2}, 1},
      {{5, 3}, 1},
      {{6, 3}, 0.5},
      {{5, 4}, 0.5},
      {{6, 4}, 0.25}};
  std::set<int64_t> expected_kept;
  for (size_t i = 0; i < plan.boxes.size(); ++i) {
    const auto key = std::make_pair(
        static_cast<int>(plan.boxes[i].x / 256), static_cast<int>(plan.boxes[i].y / 256));
    const double want = truth.count(key) ? truth[key] : 0.0;
    EXPECT_NEAR(plan.foreground[i], want, 0.05) << key.first << "," << key.second;
    if (want >= 0.75) expected_kept.insert(static_cast<int64_t>(i));
  }
  EXPECT_EQ(std::set<int64_t>(plan.kept.begin(), plan.kept.end()), expected_kept);
  EXPECT_FALSE(plan.fallback);
  // The same plan at level 1 with tiles of 128 covers the same ground.
  options.level = 1;
  options.tile = 128;
  const TilePlan half = plan_tiles(*reader, options);
  EXPECT_EQ(half.kept, plan.kept);
  EXPECT_EQ(level0_box(half.boxes[9], half.downsample), plan.boxes[9]);
}

TEST_F(TilesTest, AGreyCanvasWithABlackBackgroundHasBrightForeground) {
  // Megapixel-MNIST-like: white strokes on black. The border decides the background.
  at::Tensor canvas = torch::zeros({1, 600, 900}, torch::kUInt8);
  canvas.narrow(1, 100, 100).narrow(2, 300, 100).fill_(230);
  auto reader = memory_region_reader(canvas, "canvas");
  TileOptions options;
  options.tile = 100;
  options.min_foreground = 0.5;
  const TilePlan plan = plan_tiles(*reader, options);
  EXPECT_EQ(plan.mask.channel, "intensity");
  EXPECT_TRUE(plan.mask.foreground_high);
  ASSERT_EQ(plan.kept.size(), 1u);
  EXPECT_EQ(plan.boxes[static_cast<size_t>(plan.kept[0])], (Box{300, 100, 100, 100}));
  // And dark ink on white paper.
  auto paper = memory_region_reader(255 - canvas, "paper");
  const TilePlan inverse = plan_tiles(*paper, options);
  EXPECT_FALSE(inverse.mask.foreground_high);
  EXPECT_EQ(inverse.kept, plan.kept);
}

TEST_F(TilesTest, ThinStrokesSurviveAFullSizeMaskWithoutCleanUp) {
  // A block (so that Otsu sees two classes) and a line 2 pixels wide in another tile.
  at::Tensor canvas = torch::zeros({1, 400, 400}, torch::kUInt8);
  canvas.narrow(1, 0, 100).narrow(2, 0, 100).fill_(255);
  canvas.narrow(1, 250, 2).narrow(2, 210, 80).fill_(255);
  auto reader = memory_region_reader(canvas, "strokes");
  TileOptions options;
  options.tile = 100;
  options.min_foreground = 0.01;
  options.mask_side = 400;
  const Box line_tile{200, 200, 100, 100};
  auto kept = [&](const TilePlan& plan) {
    for (int64_t i : plan.kept) {
      if (plan.boxes[static_cast<size_t>(i)] == line_tile) return true;
    }
    return false;
  };
  EXPECT_FALSE(kept(plan_tiles(*reader, options)));  // the opening erases the line
  options.cleanup = false;
  const TilePlan plan = plan_tiles(*reader, options);
  EXPECT_TRUE(kept(plan));
  EXPECT_EQ(plan.mask.mask.size(0), 400);
  options.mask_side = 8;
  EXPECT_THROW(plan_tiles(*reader, options), OptionError);
}

// A small object on a large black canvas (a digit on a Megapixel MNIST canvas): no tile
// holds min_foreground of it, so the tiles with any foreground are kept, not all of them.
TEST_F(TilesTest, SparseContentKeepsTheTilesWithAnyForegroundAndSaysSo) {
  at::Tensor canvas = torch::zeros({1, 300, 300}, torch::kUInt8);
  canvas.narrow(1, 130, 25).narrow(2, 120, 25).fill_(255);  // inside the centre tile
  auto reader = memory_region_reader(canvas, "canvas");
  TileOptions options;
  options.tile = 100;
  const TilePlan plan = plan_tiles(*reader, options);
  EXPECT_TRUE(plan.sparse);
  EXPECT_FALSE(plan.fallback);
  EXPECT_EQ(plan.kept, std::vector<int64_t>{4});
}

TEST_F(TilesTest, NoForegroundKeepsEveryTileAndSaysSo) {
  auto blank = memory_region_reader(torch::full({3, 300, 300}, 255, torch::kUInt8), "blank");
  TileOptions options;
  options.tile = 100;
  const TilePlan plan = plan_tiles(*blank, options);
  EXPECT_TRUE(plan.fallback);
  EXPECT_FALSE(plan.sparse);
  EXPECT_EQ(plan.kept.size(), 9u);
  options.min_foreground = 0;  // no filter: no mask, every tile
  const TilePlan all = plan_tiles(*blank, options);
  EXPECT_FALSE(all.fallback);
  EXPECT_FALSE(all.mask.mask.defined());
  EXPECT_EQ(all.kept.size(), 9u);
}

TEST_F(TilesTest, TheStreamHandsOutEveryTileInOrderResized) {
  const at::Tensor image = test::synthetic_slide();
  write_pyramid_tiff(path("slide.tif"), image);
  auto reader = open_region_reader(path("slide.tif"));
  const std::vector<Box> boxes = tile_lattice(2048, 1536, 256, 192);
  TileStream stream(*reader, 0, boxes, {32, 5, 3, 2});
  EXPECT_EQ(stream.num_batches(), static_cast<int64_t>((boxes.size() + 4) / 5));
  int64_t seen = 0;
  for (TileBatch batch; stream.next(batch);) {
    EXPECT_EQ(batch.first, seen);
    for (int64_t i = 0; i < batch.tiles.size(0); ++i) {
      const Box& b = boxes[static_cast<size_t>(seen + i)];
      const at::Tensor expected =
          resize_image(image.narrow(1, b.y, b.h).narrow(2, b.x, b.w).contiguous(), 32, 32);
      ASSERT_TRUE(torch::equal(batch.tiles[i], expected)) << seen + i;
    }
    seen += batch.tiles.size(0);
  }
  EXPECT_EQ(seen, static_cast<int64_t>(boxes.size()));
  TileBatch none;
  EXPECT_FALSE(stream.next(none));
}

TEST_F(TilesTest, AReadErrorReachesTheConsumerAndTheStreamStops) {
  auto reader = memory_region_reader(torch::zeros({1, 64, 64}, torch::kUInt8), "small");
  std::vector<Box> boxes(40, Box{0, 0, 16, 16});
  boxes[23] = Box{60, 60, 16, 16};  // outside
  TileStream stream(*reader, 0, boxes, {8, 4, 2, 2});
  std::string message;
  try {
    for (TileBatch b; stream.next(b);) {
    }
  } catch (const InputError& e) {
    message = e.what();
  }
  EXPECT_THAT(message, HasSubstr("small: region 16x16 at (60, 60)"));
}

TEST_F(TilesTest, TheSheetIsTheThumbnailWithTilesDrawn) {
  write_pyramid_tiff(path("slide.tif"), test::synthetic_slide());
  auto reader = open_region_reader(path("slide.tif"));
  TileOptions options;
  const TilePlan plan = plan_tiles(*reader, options);
  const at::Tensor sheet = render_tile_sheet(plan.mask.thumbnail, plan, 2048, 1536);
  ASSERT_EQ(sheet.size(0), 3);
  EXPECT_EQ(sheet.size(2), std::max<int64_t>(520, plan.mask.thumbnail.size(2)));  // legend
  EXPECT_GT(sheet.size(1), plan.mask.thumbnail.size(1));  // the legend below
  // A kept tile's outline is green, a rejected one's red.
  const auto px = [&](int64_t y, int64_t x) {
    return sheet.index({torch::indexing::Slice(), y, x});
  };
  const double s = static_cast<double>(plan.mask.thumbnail.size(2)) / 2048.0;
  const at::Tensor kept = px(static_cast<int64_t>(256 * s), static_cast<int64_t>(300 * s));
  const at::Tensor rejected = px(0, static_cast<int64_t>(100 * s));
  EXPECT_GT(kept[1].item<int>(), kept[0].item<int>());
  EXPECT_GT(rejected[0].item<int>(), rejected[1].item<int>());
}

}  // namespace
}  // namespace patchwise
