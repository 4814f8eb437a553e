#include "patchwise/patch/bags.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "patchwise/base/error.h"

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
  bag.sparse = plan.sparse;
  bag.fallback = plan.fallback;
  bag.lattice = static_cast<int64_t>(plan.boxes.size());
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

void FilterTally::add(int64_t item, const Bag& bag) {
  std::lock_guard<std::mutex> guard(mutex_);
  if (!seen_.insert(item).second) return;
  const int64_t kept = bag.tiles.size(0);
  if (bag.sparse) {
    ++sparse_;
    sparse_kept_ += kept;
    sparse_lattice_ += bag.lattice;
  } else if (bag.fallback) {
    ++fallback_;
    fallback_tiles_ += kept;
  }
}

std::string FilterTally::notice(double min_foreground) const {
  std::lock_guard<std::mutex> guard(mutex_);
  if (sparse_ == 0 && fallback_ == 0) return "";
  const auto images = static_cast<int64_t>(seen_.size());
  std::string out = fmt::format(
      "the tile filter kept no tile of --min-foreground {} in {} of {} images",
      min_foreground,
      sparse_ + fallback_,
      images);
  if (sparse_ > 0) {
    out += fmt::format(
        "; in {} of them it kept the tiles with any foreground instead ({:.1f} of {:.1f} on "
        "average)",
        sparse_,
        static_cast<double>(sparse_kept_) / sparse_,
        static_cast<double>(sparse_lattice_) / sparse_);
  }
  if (fallback_ > 0) {
    out += fmt::format(
        "; in {} none has any foreground and all {:.1f} tiles on average were kept",
        fallback_,
        static_cast<double>(fallback_tiles_) / fallback_);
  }
  return out + "; `patchwise tiles IMAGE` shows them, --min-foreground sets the threshold";
}

void FilterTally::say_once(const std::string& command, double min_foreground) {
  const std::string line = notice(min_foreground);
  std::lock_guard<std::mutex> guard(mutex_);
  if (line.empty() || said_) return;
  said_ = true;
  fmt::print(stderr, "{}: note: {}\n", command, line);
}

std::function<at::Tensor(int64_t)> bag_reader(
    const Dataset& data, const BagOptions& options, int64_t cache_bytes,
    std::shared_ptr<FilterTally> tally) {
  struct Cache {
    std::mutex lock;
    std::map<int64_t, at::Tensor> bags;
    int64_t bytes = 0;
  };
  auto cache = std::make_shared<Cache>();
  const std::vector<std::string> paths = data.files.paths;
  return [cache, paths, options, cache_bytes, tally](int64_t item) {
    {
      std::lock_guard<std::mutex> guard(cache->lock);
      auto found = cache->bags.find(item);
      if (found != cache->bags.end()) return found->second;
    }
    const Bag bag = read_bag(paths.at(static_cast<size_t>(item)), options);
    if (tally) tally->add(item, bag);
    at::Tensor tiles = bag.tiles;
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

PaddedBags pad_bags(const at::Tensor& flat, const std::vector<int64_t>& counts) {
  TORCH_CHECK(!counts.empty(), "pad_bags: no bags");
  const auto bags = static_cast<int64_t>(counts.size());
  int64_t total = 0;
  int64_t longest = 0;
  for (int64_t n : counts) {
    TORCH_CHECK(n >= 1, "pad_bags: a bag of ", n, " rows, expected at least 1");
    total += n;
    longest = std::max(longest, n);
  }
  TORCH_CHECK(
      flat.dim() >= 1 && flat.size(0) == total,
      "pad_bags: ",
      flat.sizes(),
      " rows for bags of ",
      total,
      " in all");
  std::vector<int64_t> shape = flat.sizes().vec();
  shape[0] = longest;
  shape.insert(shape.begin(), bags);
  if (longest * bags == total) return {flat.view(shape), {}};
  std::vector<int64_t> rows;  // where each row of `flat` goes in the [B*P] padded rows
  rows.reserve(static_cast<size_t>(total));
  for (int64_t b = 0; b < bags; ++b) {
    for (int64_t i = 0; i < counts[static_cast<size_t>(b)]; ++i) rows.push_back(b * longest + i);
  }
  at::Tensor index = torch::tensor(rows, torch::kInt64).to(flat.device());
  std::vector<int64_t> padded_shape = flat.sizes().vec();
  padded_shape[0] = bags * longest;
  at::Tensor padded = torch::zeros(padded_shape, flat.options()).index_copy(0, index, flat);
  at::Tensor mask =
      torch::zeros({bags * longest}, flat.options().dtype(torch::kBool)).index_fill(0, index, true);
  return {padded.view(shape), mask.view({bags, longest})};
}

}  // namespace patchwise
