#include "patchwise/patch/bags.h"

#include <torch/torch.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "patchwise/core/error.h"

namespace patchwise {

Bag read_bag(const std::string& path, const BagOptions& options) {
  return read_bag(*open_region_reader(path, options.reader), options);
}

Bag read_bag(const RegionReader& reader, const BagOptions& options) {
  check_input(
      options.channels == 0 || reader.channels() == options.channels,
      "{}: {} channel(s), the model expects {}",
      reader.path(),
      reader.channels(),
      options.channels);
  const TilePlan plan = plan_tiles(reader, options.tiles);
  Bag bag;
  bag.level = plan.level;
  bag.fallback = plan.fallback;
  const int64_t c = reader.channels();
  const int64_t side = options.input;
  const auto n = static_cast<int64_t>(plan.kept.size());
  bag.tiles = torch::empty({n, c, side, side}, torch::kUInt8);
  uint8_t* out = bag.tiles.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    const Box& box = plan.boxes[static_cast<size_t>(plan.kept[static_cast<size_t>(i)])];
    const at::Tensor tile = reader.read_resized(box, plan.level, side);  // contiguous [C,s,s]
    std::memcpy(out + i * c * side * side, tile.data_ptr<uint8_t>(), c * side * side);
    bag.boxes.push_back(level0_box(box, plan.downsample));
  }
  return bag;
}

std::function<at::Tensor(int64_t)> bag_reader(
    const Dataset& data, const BagOptions& options, int64_t cache_bytes) {
  struct Cache {
    std::mutex lock;
    std::map<int64_t, at::Tensor> bags;
    int64_t bytes = 0;
  };
  auto cache = std::make_shared<Cache>();
  const std::vector<std::string> paths = data.files.paths;
  return [cache, paths, options, cache_bytes](int64_t item) {
    {
      std::lock_guard<std::mutex> guard(cache->lock);
      auto found = cache->bags.find(item);
      if (found != cache->bags.end()) return found->second;
    }
    at::Tensor tiles = read_bag(paths.at(static_cast<size_t>(item)), options).tiles;
    std::lock_guard<std::mutex> guard(cache->lock);
    if (cache->bytes + tiles.numel() <= cache_bytes) {
      cache->bags.emplace(item, tiles);
      cache->bytes += tiles.numel();
    }
    return tiles;
  };
}

Normalization tile_normalization(const Dataset& data, const BagOptions& options, int64_t images) {
  std::vector<at::Tensor> tiles;
  for (int64_t i = 0; i < std::min(images, data.size()); ++i) {
    tiles.push_back(read_bag(data.files.paths[static_cast<size_t>(i)], options).tiles);
  }
  return compute_normalization(torch::cat(tiles));
}

}  // namespace patchwise
