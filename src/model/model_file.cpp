#include "patchwise/model/model_file.h"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <vector>

#include "little_endian.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/base/json_text.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kMagicSize = sizeof(kModelMagic) - 1;
constexpr size_t kLengthSize = 8;
constexpr size_t kTrailerSize = sizeof(kChecksumTag) - 1 + 4;
/// A configuration larger than this is not one we wrote.
constexpr uint64_t kMaxConfigBytes = 64u << 20;

using detail::put_le;
using detail::read_le;

uint32_t checksum(const std::string& bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  size_t done = 0;
  while (done < bytes.size()) {  // crc32 takes a uInt length
    const auto chunk = static_cast<uInt>(std::min<size_t>(bytes.size() - done, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + done), chunk);
    done += chunk;
  }
  return static_cast<uint32_t>(crc);
}

template <typename T>
T field(const json& j, const char* key, const std::string& source) {
  check_input(j.contains(key), "{}: model configuration lacks '{}'", source, key);
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw InputError(fmt::format(
        "{}: model configuration field '{}' has the wrong type ({})",
        source,
        key,
        j.at(key).dump()));
  }
}

}  // namespace

json model_config_to_json(const ModelConfig& c) {
  json j{
      {"format", "patchwise-model"},
      {"format_version", kModelFormatVersion},
      {"image", {{"channels", c.image_channels}, {"height", c.image_h}, {"width", c.image_w}}},
      {"grid",
       {{"layout", patch_layout_name(c.grid.layout)},
        {"rows", c.grid.rows},
        {"cols", c.grid.cols},
        {"patch_h", c.grid.patch_h},
        {"patch_w", c.grid.patch_w},
        {"stride_h", c.grid.stride_h},
        {"stride_w", c.grid.stride_w},
        {"input", c.grid.input}}},
      {"backbone",
       {{"name", c.backbone.name},
        {"in_channels", c.backbone.in_channels},
        {"num_classes", c.backbone.num_classes},
        {"input", c.backbone.input},
        {"batch_norm", c.backbone.batch_norm},
        {"dropout", c.backbone.dropout}}},
      {"fusion", fusion_rule_name(c.fusion)},
      {"attention", {{"hidden", c.attention_hidden}, {"position_embedding", c.position_embedding}}},
      {"classes", c.class_names},
      {"normalization", {{"mean", c.normalization.mean}, {"std", c.normalization.std}}},
  };
  if (c.tiled) {  // only tiled models have the section
    j["tiles"] = {
        {"tile", c.tiles.tile},
        {"stride", c.tiles.stride},
        {"level", c.tiles.level},
        {"mpp", c.tiles.mpp},
        {"min_foreground", c.tiles.min_foreground},
        {"mask_side", c.tiles.mask_side},
        {"cleanup", c.tiles.cleanup}};
  }
  return j;
}

namespace {

/// Runs `f`; an OptionError about a value the file holds is reported against the file.
template <typename F>
auto held_in(const std::string& path, F&& f) {
  try {
    return f();
  } catch (const OptionError& e) {
    throw InputError(fmt::format("{}: {}", path, e.what()));
  }
}

}  // namespace

ModelConfig model_config_from_json(const json& j, const std::string& source) {
  check_input(j.is_object(), "{}: model configuration is not a JSON object", source);
  int version = field<int>(j, "format_version", source);
  check_input(
      version != 1,
      "{}: model file format version 1 (LibTorch archive weights, patchwise 0.1), which "
      "is no longer read, expected {}: train the model again",
      source,
      kModelFormatVersion);
  check_input(
      version == kModelFormatVersion,
      "{}: model file format version {}, expected {}",
      source,
      version,
      kModelFormatVersion);
  ModelConfig c;
  json image = field<json>(j, "image", source);
  c.image_channels = field<int64_t>(image, "channels", source);
  c.image_h = field<int64_t>(image, "height", source);
  c.image_w = field<int64_t>(image, "width", source);
  // The largest image read whole (read_image's bound), checked before anything allocates.
  constexpr int64_t kMaxSide = 1 << 16, kMaxPixels = 100'000'000;
  check_input(
      c.image_h >= 0 && c.image_w >= 0 && c.image_h <= kMaxSide && c.image_w <= kMaxSide &&
          c.image_h * c.image_w <= kMaxPixels,
      "{}: image size {}x{}, expected sides of at most {} and at most {} pixels",
      source,
      c.image_h,
      c.image_w,
      kMaxSide,
      kMaxPixels);
  json grid = field<json>(j, "grid", source);
  c.grid.layout = held_in(
      source, [&] { return parse_patch_layout(field<std::string>(grid, "layout", source)); });
  c.grid.rows = field<int64_t>(grid, "rows", source);
  c.grid.cols = field<int64_t>(grid, "cols", source);
  c.grid.patch_h = field<int64_t>(grid, "patch_h", source);
  c.grid.patch_w = field<int64_t>(grid, "patch_w", source);
  c.grid.stride_h = field<int64_t>(grid, "stride_h", source);
  c.grid.stride_w = field<int64_t>(grid, "stride_w", source);
  c.grid.input = field<int64_t>(grid, "input", source);
  json backbone = field<json>(j, "backbone", source);
  c.backbone.name = field<std::string>(backbone, "name", source);
  c.backbone.in_channels = field<int64_t>(backbone, "in_channels", source);
  c.backbone.num_classes = field<int64_t>(backbone, "num_classes", source);
  c.backbone.input = field<int64_t>(backbone, "input", source);
  c.backbone.batch_norm = field<bool>(backbone, "batch_norm", source);
  c.backbone.dropout = field<double>(backbone, "dropout", source);
  c.fusion =
      held_in(source, [&] { return parse_fusion_rule(field<std::string>(j, "fusion", source)); });
  if (j.contains("attention")) {  // optional: only the learned rules use it
    json attention = field<json>(j, "attention", source);
    c.attention_hidden = field<int64_t>(attention, "hidden", source);
    c.position_embedding = field<bool>(attention, "position_embedding", source);
  }
  c.class_names = field<std::vector<std::string>>(j, "classes", source);
  json norm = field<json>(j, "normalization", source);
  c.normalization.mean = field<std::vector<double>>(norm, "mean", source);
  c.normalization.std = field<std::vector<double>>(norm, "std", source);
  if (j.contains("tiles")) {
    json tiles = field<json>(j, "tiles", source);
    c.tiled = true;
    c.tiles.tile = field<int64_t>(tiles, "tile", source);
    c.tiles.stride = field<int64_t>(tiles, "stride", source);
    c.tiles.level = field<int>(tiles, "level", source);
    c.tiles.mpp = field<double>(tiles, "mpp", source);
    c.tiles.min_foreground = field<double>(tiles, "min_foreground", source);
    c.tiles.mask_side = field<int64_t>(tiles, "mask_side", source);
    c.tiles.cleanup = field<bool>(tiles, "cleanup", source);
    held_in(source, [&] { check_tile_options(c.tiles); });
  }
  return c;
}

namespace {

/// One tensor record of a model file, located but not yet copied.
struct Record {
  at::ScalarType type;
  std::vector<int64_t> sizes;
  size_t offset = 0;  ///< of the elements in the file's bytes
  size_t size = 0;    ///< bytes of elements
};

struct ModelFileParts {
  std::string file;  ///< the bytes the records point into
  json config;
  std::map<std::string, Record> records;
};

constexpr size_t kMaxDims = 8;

/// The record type codes of the format (model_file.h).
uint8_t type_code(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return 1;
    case at::kDouble:
      return 2;
    case at::kLong:
      return 3;
    case at::kByte:
      return 4;
    default:
      break;
  }
  throw std::logic_error(fmt::format("model file: no record type for {}", c10::toString(type)));
}

void write_record(std::string& file, const std::string& name, const at::Tensor& tensor) {
  const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  if (name.size() > 0xffff || t.dim() > static_cast<int64_t>(kMaxDims)) {
    throw std::logic_error(fmt::format("model file: cannot store '{}'", name));
  }
  put_le(file, name.size(), 2);
  file += name;
  file.push_back(char(type_code(t.scalar_type())));
  file.push_back(char(t.dim()));
  for (int64_t d = 0; d < t.dim(); ++d) put_le(file, static_cast<uint64_t>(t.size(d)), 8);
  file.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
}

/// Parses the tensor records from `at` to the end of `file` (the trailer removed).
/// Every declared size is checked against the bytes present before anything is
/// allocated for it.
std::map<std::string, Record> read_records(
    const std::string& file, size_t at, const std::string& path) {
  auto need = [&](uint64_t bytes, const char* what) {
    check_input(
        bytes <= file.size() - at, "{}: truncated tensor records ({} at byte {})", path, what, at);
  };
  auto take = [&](size_t width) {
    need(width, "a header field");
    const uint64_t value = read_le(file, at, width);
    at += width;
    return value;
  };
  const uint64_t count = take(4);
  // Each record takes at least 4 bytes: a count beyond that is a lie.
  check_input(
      count <= (file.size() - at) / 4,
      "{}: {} tensor records declared in {} bytes",
      path,
      count,
      file.size() - at);
  std::map<std::string, Record> records;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t name_length = take(2);
    need(name_length, "a name");
    std::string name = file.substr(at, name_length);
    at += name_length;
    const uint64_t code = take(1);
    const uint64_t dims = take(1);
    Record r;
    switch (code) {
      case 1:
        r.type = at::kFloat;
        break;
      case 2:
        r.type = at::kDouble;
        break;
      case 3:
        r.type = at::kLong;
        break;
      case 4:
        r.type = at::kByte;
        break;
      default:
        throw InputError(
            fmt::format("{}: tensor '{}' has type code {}, expected 1 to 4", path, name, code));
    }
    check_input(
        dims <= kMaxDims,
        "{}: tensor '{}' has {} dimensions, expected at most {}",
        path,
        name,
        dims,
        kMaxDims);
    const uint64_t element = c10::elementSize(r.type);
    uint64_t elements = 1;
    for (uint64_t d = 0; d < dims; ++d) {
      const uint64_t size = take(8);
      // Division, not multiplication: a forged size cannot overflow the check.
      check_input(
          size == 0 || elements <= (file.size() - at) / element / size,
          "{}: tensor '{}' declares more elements than the file's {} bytes hold",
          path,
          name,
          file.size());
      elements *= size;
      r.sizes.push_back(static_cast<int64_t>(size));
    }
    need(elements * element, "tensor data");
    r.offset = at;
    r.size = elements * element;
    at += elements * element;
    check_input(
        records.emplace(name, std::move(r)).second, "{}: tensor '{}' stored twice", path, name);
  }
  check_input(
      at == file.size(), "{}: {} bytes after the last tensor record", path, file.size() - at);
  return records;
}

/// The record as a tensor (CPU, its own memory).
at::Tensor to_tensor(const std::string& file, const Record& r) {
  at::Tensor t = torch::empty(r.sizes, torch::TensorOptions().dtype(r.type));
  std::memcpy(t.data_ptr(), file.data() + r.offset, r.size);
  return t;
}

ModelFileParts read_model_file(const std::string& path) {
  check_readable_file(path, "model file");
  std::ifstream in(path, std::ios::binary);
  check_input(in.good(), "{}: cannot open for reading", path);
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  check_input(
      file.compare(0, kMagicSize, kModelMagic) == 0,
      "{}: not a patchwise model file (it does not start with '{}')",
      path,
      kModelMagic);
  check_input(file.size() >= kMagicSize + kLengthSize, "{}: truncated model file header", path);

  // The checksum first: nothing of a corrupt file is parsed.
  const size_t tag_at = file.size() - kTrailerSize;
  const bool has_trailer = file.size() >= kMagicSize + kLengthSize + kTrailerSize &&
                           file.compare(tag_at, kTrailerSize - 4, kChecksumTag) == 0;
  if (has_trailer) {
    const auto stored = static_cast<uint32_t>(read_le(file, tag_at + kTrailerSize - 4, 4));
    file.resize(tag_at);
    const uint32_t computed = checksum(file);
    check_input(
        stored == computed,
        "{}: checksum mismatch (stored {:08x}, computed {:08x}): the file is corrupt",
        path,
        stored,
        computed);
  }

  const uint64_t length = read_le(file, kMagicSize, kLengthSize);
  const uint64_t room = file.size() - kMagicSize - kLengthSize;
  check_input(
      length <= kMaxConfigBytes && length <= room,
      "{}: configuration of {} bytes declared, but the file has {} bytes",
      path,
      length,
      file.size());
  ModelFileParts parts;
  try {
    parts.config = json::parse(file.substr(kMagicSize + kLengthSize, length));
  } catch (const json::exception& e) {
    throw InputError(fmt::format("{}: corrupt model configuration ({})", path, e.what()));
  }
  const json version =
      parts.config.is_object() ? parts.config.value("format_version", json()) : json();
  if (!has_trailer && version.is_number_integer() && version.get<int>() != kModelFormatVersion) {
    model_config_from_json(parts.config, path);  // names the version
  }
  check_input(
      has_trailer, "{}: no checksum at the end of the file: it is truncated or corrupt", path);
  parts.records = read_records(file, kMagicSize + kLengthSize + length, path);
  parts.file = std::move(file);  // the records' offsets point into it
  return parts;
}

/// Copies the "model/" records into the model's parameters and buffers, after
/// checking each has the type and shape the configuration implies; a missing or an
/// unexpected weight is refused.
void load_weights(
    PatchClassifierImpl& model, const ModelFileParts& parts, const std::string& path) {
  const std::map<std::string, Record>& records = parts.records;
  const std::string& file = parts.file;
  std::vector<std::pair<std::string, at::Tensor>> targets;
  for (auto& p : model.named_parameters()) targets.emplace_back(p.key(), p.value());
  for (auto& b : model.named_buffers()) targets.emplace_back(b.key(), b.value());
  std::set<std::string> expected;
  for (const auto& target : targets) expected.insert("model/" + target.first);
  for (const auto& record : records) {
    check_input(
        record.first.rfind("model/", 0) != 0 || expected.count(record.first) > 0,
        "{}: unexpected weight '{}' for this configuration",
        path,
        record.first.substr(6));
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    auto it = records.find("model/" + name);
    check_input(it != records.end(), "{}: weights lack '{}'", path, name);
    const Record& r = it->second;
    check_input(
        r.sizes == target.sizes(),
        "{}: weight '{}' has shape {}, expected {}",
        path,
        name,
        fmt::join(r.sizes, "x"),
        fmt::join(target.sizes(), "x"));
    check_input(
        r.type == target.scalar_type(),
        "{}: weight '{}' has type {}, expected {}",
        path,
        name,
        c10::toString(r.type),
        c10::toString(target.scalar_type()));
    target.copy_(to_tensor(file, r));
    check_input(
        !target.is_floating_point() || torch::isfinite(target).all().item<bool>(),
        "{}: weight '{}' holds values that are not finite (NaN or infinite), expected numbers",
        path,
        printable(name));
  }
}

}  // namespace

void save_model(
    const std::string& path, PatchClassifier& model, const json& training, const TensorMap& state) {
  json config = model_config_to_json(model->config());
  if (!training.is_null()) config["training"] = training;
  const std::string text = json_text(config);

  std::vector<std::pair<std::string, at::Tensor>> records;
  for (const auto& p : model->named_parameters())
    records.emplace_back("model/" + p.key(), p.value());
  for (const auto& b : model->named_buffers()) records.emplace_back("model/" + b.key(), b.value());
  for (const auto& [key, tensor] : state) records.emplace_back("state/" + key, tensor);

  std::string file(kModelMagic, kMagicSize);
  put_le(file, text.size(), kLengthSize);
  file += text;
  put_le(file, records.size(), 4);
  for (const auto& [name, tensor] : records) write_record(file, name, tensor);
  const uint32_t sum = checksum(file);
  file.append(kChecksumTag, kTrailerSize - 4);
  put_le(file, sum, 4);
  write_file_atomically(path, "model file", [&](std::ostream& out) {
    out.write(file.data(), static_cast<std::streamsize>(file.size()));
  });
}

PatchClassifier load_model(const std::string& path) { return load_model_file(path).model; }

TensorMap load_model_state(const std::string& path) { return load_model_file(path).state; }

const at::Tensor& state_tensor(
    const TensorMap& state, const std::string& key, const std::string& path) {
  auto it = state.find(key);
  check_input(
      it != state.end(), "{}: lacks the state '{}', expected a training checkpoint", path, key);
  return it->second;
}

void load_model_weights(PatchClassifier& model, const std::string& path) {
  const ModelFileParts parts = read_model_file(path);
  const c10::Device device = model->device();
  model->to(torch::kCPU);
  load_weights(*model, parts, path);
  model->to(device);
}

ModelFile load_model_file(const std::string& path) {
  ModelFileParts parts = read_model_file(path);
  ModelConfig config = model_config_from_json(parts.config, path);
  ModelFile out;
  out.model = held_in(path, [&] { return PatchClassifier(config); });
  load_weights(*out.model, parts, path);
  out.model->eval();
  if (parts.config.contains("training")) out.training = parts.config["training"];
  for (const auto& [name, record] : parts.records) {
    if (name.rfind("state/", 0) == 0) {
      out.state.emplace(name.substr(6), to_tensor(parts.file, record));
    }
  }
  return out;
}

json load_model_training(const std::string& path) {
  ModelFileParts parts = read_model_file(path);
  return parts.config.contains("training") ? parts.config["training"] : json();
}

}  // namespace patchwise
