#include "patchwise/model/feature_cache.h"

#include <torch/torch.h>

#include <algorithm>
#include <future>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "patchwise/base/error.h"
#include "patchwise/model/model_file.h"
#include "patchwise/models/backbone.h"
#include "patchwise/patch/bags.h"

namespace patchwise {
namespace {

using nlohmann::json;

at::Tensor boxes_tensor(const std::vector<Box>& boxes) {
  at::Tensor out = torch::empty({static_cast<int64_t>(boxes.size()), 4}, torch::kInt64);
  int64_t* p = out.data_ptr<int64_t>();
  for (const Box& b : boxes) {
    *p++ = b.x;
    *p++ = b.y;
    *p++ = b.w;
    *p++ = b.h;
  }
  return out;
}

/// The images of every set in order: (path, label, split).
struct CacheItem {
  std::string path;
  int64_t label;
  std::string split;
};

std::vector<CacheItem> cache_items(const std::vector<CacheSet>& sets) {
  std::vector<CacheItem> items;
  for (const auto& [split, data] : sets) {
    check_input(
        split == "train" || split == "test",
        "feature cache: split '{}', expected train or test",
        split);
    for (int64_t i = 0; i < data->size(); ++i) {
      items.push_back(
          {data->files.paths.at(static_cast<size_t>(i)), data->labels[i].item<int64_t>(), split});
    }
  }
  return items;
}

const at::Tensor& record(
    const TensorMap& state, const std::string& key, at::ScalarType type, int64_t dims,
    const std::string& path) {
  auto it = state.find(key);
  check_input(it != state.end(), "{}: feature cache lacks the record '{}'", path, key);
  check_input(
      it->second.scalar_type() == type && it->second.dim() == dims,
      "{}: feature cache record '{}' is {} {}, expected {} with {} dimensions",
      path,
      key,
      c10::toString(it->second.scalar_type()),
      fmt::join(it->second.sizes(), "x"),
      c10::toString(type),
      dims);
  return it->second;
}

/// The offsets start at 0, end at N and grow by at least 1 per image.
void check_offsets(const FeatureCache& c, const std::string& path) {
  const int64_t m = c.images();
  check_input(
      c.offsets.size(0) == m + 1,
      "{}: feature cache has {} offsets for {} images, expected {}",
      path,
      c.offsets.size(0),
      m,
      m + 1);
  const int64_t* o = c.offsets.data_ptr<int64_t>();
  check_input(
      o[0] == 0 && o[m] == c.features.size(0),
      "{}: feature cache offsets run from {} to {}, expected 0 to the {} feature rows",
      path,
      o[0],
      o[m],
      c.features.size(0));
  for (int64_t i = 0; i < m; ++i) {
    check_input(
        o[i + 1] > o[i],
        "{}: feature cache image {} has {} tiles, expected at least 1",
        path,
        i,
        o[i + 1] - o[i]);
  }
}

void check_records(const FeatureCache& c, const std::string& path) {
  const int64_t m = c.images();
  check_input(
      static_cast<int64_t>(c.splits.size()) == m && c.labels.size(0) == m,
      "{}: feature cache lists {} files, {} splits and {} labels, expected as many of each",
      path,
      m,
      c.splits.size(),
      c.labels.size(0));
  for (const std::string& s : c.splits) {
    check_input(
        s == "train" || s == "test",
        "{}: feature cache split '{}', expected train or test",
        path,
        s);
  }
  const int64_t f = c.model->backbone().feature_dim();
  check_input(
      c.features.size(1) == f,
      "{}: feature cache features are {} wide, the backbone's are {}",
      path,
      c.features.size(1),
      f);
  check_input(
      c.boxes.size(0) == c.features.size(0) && c.boxes.size(1) == 4,
      "{}: feature cache has boxes {} for {} feature rows, expected [{},4]",
      path,
      fmt::join(c.boxes.sizes(), "x"),
      c.features.size(0),
      c.features.size(0));
  check_offsets(c, path);
  if (m > 0) {
    const int64_t low = c.labels.min().item<int64_t>();
    const int64_t high = c.labels.max().item<int64_t>();
    check_input(
        low >= 0 && high < c.model->num_classes(),
        "{}: feature cache label {} out of range, the model has classes 0..{}",
        path,
        low < 0 ? low : high,
        c.model->num_classes() - 1);
  }
}

std::vector<int64_t> split_index(const FeatureCache& c, const std::string& split) {
  std::vector<int64_t> index;
  for (int64_t i = 0; i < c.images(); ++i) {
    if (c.splits[static_cast<size_t>(i)] == split) index.push_back(i);
  }
  return index;
}

}  // namespace

at::Tensor FeatureCache::bag(int64_t i) const {
  const int64_t begin = offsets[i].item<int64_t>();
  return features.narrow(0, begin, offsets[i + 1].item<int64_t>() - begin);
}

Dataset FeatureCache::split(const std::string& split, const std::string& source) const {
  Dataset data;
  data.source = source;
  data.class_names = model->config().class_names;
  const std::vector<int64_t> index = split_index(*this, split);
  for (int64_t i : index) data.files.paths.push_back(files[static_cast<size_t>(i)]);
  data.files.channels = model->config().image_channels;
  data.labels = labels.index_select(0, torch::tensor(index, torch::kInt64));
  return data;
}

BagFn FeatureCache::bags(const Dataset& data) const {
  std::unordered_map<std::string, int64_t> index;
  for (int64_t i = images() - 1; i >= 0; --i) index[files[static_cast<size_t>(i)]] = i;
  // Views into the one features tensor, made here: the loader's thread calls no operator.
  auto views = std::make_shared<std::vector<at::Tensor>>();
  for (const std::string& file : data.files.paths) {
    auto it = index.find(file);
    check_input(it != index.end(), "{}: {} is not in the feature cache", data.source, file);
    views->push_back(bag(it->second));
  }
  return [views](int64_t item) { return views->at(static_cast<size_t>(item)); };
}

PatchClassifier head_model(const FeatureCache& cache, const ModelConfig& config) {
  PatchClassifier model(config);
  const BackboneImpl& from = cache.model->backbone();
  BackboneImpl& to = model->backbone();
  std::vector<at::Tensor> head = to.classifier_parameters();
  auto in_head = [&](const at::Tensor& t) {
    return std::any_of(head.begin(), head.end(), [&](const at::Tensor& h) { return h.is_same(t); });
  };
  torch::NoGradGuard no_grad;
  auto source = from.named_parameters();
  for (auto& item : to.named_parameters()) {
    if (!in_head(item.value())) item.value().copy_(source[item.key()]);
  }
  auto source_buffers = from.named_buffers();
  for (auto& item : to.named_buffers()) item.value().copy_(source_buffers[item.key()]);
  model->freeze_features();
  return model;
}

FeatureCache compute_feature_cache(
    PatchClassifier& model, const std::vector<CacheSet>& sets, const RegionReaderOptions& reader,
    const std::function<void(int64_t, int64_t)>& on_image, FilterTally* tally) {
  const ModelConfig& config = model->config();
  check_input(
      config.tiled,
      "feature cache: the model is not a tiled model, expected one "
      "trained on large images with --tile");
  const BagOptions options{config.tiles, reader, config.grid.input, config.image_channels};
  const std::vector<CacheItem> items = cache_items(sets);
  FeatureCache cache;
  cache.model = model;
  std::vector<at::Tensor> features, boxes;
  std::vector<int64_t> offsets{0}, labels;
  auto read = [&](size_t i) { return read_bag(items[i].path, options); };
  std::future<Bag> next;
  if (!items.empty()) next = std::async(std::launch::async, read, 0);
  model->eval();
  for (size_t i = 0; i < items.size(); ++i) {
    Bag bag = next.get();
    if (tally != nullptr) tally->add(static_cast<int64_t>(i), bag);
    if (i + 1 < items.size()) next = std::async(std::launch::async, read, i + 1);
    torch::NoGradGuard no_grad;  // not InferenceMode: a head trains on these
    features.push_back(model->tile_features(bag.tiles.to(model->device())).to(torch::kCPU));
    boxes.push_back(boxes_tensor(bag.boxes));
    offsets.push_back(offsets.back() + bag.tiles.size(0));
    cache.files.push_back(items[i].path);
    cache.splits.push_back(items[i].split);
    labels.push_back(items[i].label);
    if (on_image) on_image(static_cast<int64_t>(i) + 1, static_cast<int64_t>(items.size()));
  }
  const int64_t f = model->backbone().feature_dim();
  cache.features = features.empty() ? torch::empty({0, f}) : torch::cat(features);
  cache.boxes = boxes.empty() ? torch::empty({0, 4}, torch::kInt64) : torch::cat(boxes);
  cache.offsets = torch::tensor(offsets, torch::kInt64);
  cache.labels = torch::tensor(labels, torch::kInt64);
  return cache;
}

void save_feature_cache(const std::string& path, const FeatureCache& cache) {
  json section = {
      {"format_version", kFeatureCacheVersion}, {"files", cache.files}, {"splits", cache.splits}};
  TensorMap state{
      {"features", cache.features.contiguous()},
      {"offsets", cache.offsets},
      {"labels", cache.labels},
      {"boxes", cache.boxes}};
  PatchClassifier model = cache.model;
  save_model(path, model, json{{"feature_cache", section}}, state);
}

FeatureCache load_feature_cache(const std::string& path) {
  FeatureCache c;
  ModelFile file = load_model_file(path);
  c.model = file.model;
  const json& training = file.training;
  check_input(
      training.is_object() && training.contains("feature_cache"),
      "{}: a model file without features, expected a feature cache (patchwise features)",
      path);
  const json& section = training["feature_cache"];
  try {
    const int version = section.at("format_version").get<int>();
    check_input(
        version == kFeatureCacheVersion,
        "{}: feature cache format version {}, expected {}",
        path,
        version,
        kFeatureCacheVersion);
    c.files = section.at("files").get<std::vector<std::string>>();
    c.splits = section.at("splits").get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    throw InputError(fmt::format("{}: unreadable feature cache section ({})", path, e.what()));
  }
  check_input(
      c.model->config().tiled,
      "{}: feature cache model is not tiled, expected a tiled model",
      path);
  const TensorMap& state = file.state;
  c.features = record(state, "features", torch::kFloat32, 2, path);
  c.offsets = record(state, "offsets", torch::kInt64, 1, path);
  c.labels = record(state, "labels", torch::kInt64, 1, path);
  c.boxes = record(state, "boxes", torch::kInt64, 2, path);
  check_records(c, path);
  return c;
}

}  // namespace patchwise
