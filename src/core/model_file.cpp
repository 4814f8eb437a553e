#include "patchwise/core/model_file.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "patchwise/core/error.h"
#include "patchwise/core/files.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kMagicSize = sizeof(kModelMagic) - 1;
constexpr size_t kLengthSize = 8;
/// A configuration larger than this is not one we wrote.
constexpr uint64_t kMaxConfigBytes = 64u << 20;

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

template <typename T>
T field(const json& j, const char* key, const std::string& source) {
  check_input(j.contains(key), "{}: model configuration lacks '{}'", source, key);
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw InputError(fmt::format("{}: model configuration field '{}' has the wrong type ({})",
                                 source, key, j.at(key).dump()));
  }
}

}  // namespace

json model_config_to_json(const ModelConfig& c) {
  return json{
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
}

ModelConfig model_config_from_json(const json& j, const std::string& source) {
  check_input(j.is_object(), "{}: model configuration is not a JSON object", source);
  int version = field<int>(j, "format_version", source);
  check_input(version == kModelFormatVersion,
              "{}: model file format version {}, expected {}", source, version,
              kModelFormatVersion);
  ModelConfig c;
  json image = field<json>(j, "image", source);
  c.image_channels = field<int64_t>(image, "channels", source);
  c.image_h = field<int64_t>(image, "height", source);
  c.image_w = field<int64_t>(image, "width", source);
  json grid = field<json>(j, "grid", source);
  c.grid.layout = parse_patch_layout(field<std::string>(grid, "layout", source));
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
  c.fusion = parse_fusion_rule(field<std::string>(j, "fusion", source), source);
  if (j.contains("attention")) {  // optional: only the learned rules use it
    json attention = field<json>(j, "attention", source);
    c.attention_hidden = field<int64_t>(attention, "hidden", source);
    c.position_embedding = field<bool>(attention, "position_embedding", source);
  }
  c.class_names = field<std::vector<std::string>>(j, "classes", source);
  json norm = field<json>(j, "normalization", source);
  c.normalization.mean = field<std::vector<double>>(norm, "mean", source);
  c.normalization.std = field<std::vector<double>>(norm, "std", source);
  return c;
}

void save_model(const std::string& path, PatchClassifier& model, const json& training,
                const ArchiveWriter& extra) {
  json config = model_config_to_json(model->config());
  if (!training.is_null()) config["training"] = training;
  const std::string text = config.dump();

  std::ostringstream weights;
  {
    torch::serialize::OutputArchive archive;
    auto device = model->device();
    model->to(torch::kCPU);
    model->save(archive);
    model->to(device);
    if (extra) extra(archive);
    archive.save_to(weights);
  }

  const std::string blob = weights.str();
  write_file_atomically(path, "model file", [&](std::ostream& out) {
    uint64_t length = text.size();
    uint8_t length_bytes[kLengthSize];
    for (size_t i = 0; i < kLengthSize; ++i) length_bytes[i] = uint8_t(length >> (8 * i));
    out.write(kModelMagic, kMagicSize);
    out.write(reinterpret_cast<const char*>(length_bytes), kLengthSize);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.write(blob.data(), static_cast<std::streamsize>(blob.size()));
  });
}

namespace {

struct ModelFileParts {
  json config;
  std::string weights;
};

ModelFileParts read_model_file(const std::string& path) {
  check_input(fs::exists(path), "{}: no such model file", path);
  check_input(fs::is_regular_file(path), "{}: expected a model file, found a directory", path);
  std::ifstream in(path, std::ios::binary);
  check_input(in.good(), "{}: cannot open for reading", path);
  char magic[kMagicSize] = {};
  in.read(magic, kMagicSize);
  check_input(in.gcount() == static_cast<std::streamsize>(kMagicSize) &&
                  std::memcmp(magic, kModelMagic, kMagicSize) == 0,
              "{}: not a patchwise model file (it does not start with '{}')", path, kModelMagic);
  uint8_t length_bytes[kLengthSize] = {};
  in.read(reinterpret_cast<char*>(length_bytes), kLengthSize);
  check_input(in.gcount() == static_cast<std::streamsize>(kLengthSize),
              "{}: truncated model file header", path);
  uint64_t length = 0;
  for (size_t i = 0; i < kLengthSize; ++i) length |= uint64_t(length_bytes[i]) << (8 * i);
  const uint64_t file_size = fs::file_size(path);
  check_input(length <= kMaxConfigBytes && length <= file_size - kMagicSize - kLengthSize,
              "{}: configuration of {} bytes declared, but the file has {} bytes", path, length,
              file_size);
  std::string text(length, '\0');
  in.read(text.data(), static_cast<std::streamsize>(length));
  ModelFileParts parts;
  try {
    parts.config = json::parse(text);
  } catch (const json::exception& e) {
    throw InputError(fmt::format("{}: corrupt model configuration ({})", path, e.what()));
  }
  std::ostringstream rest;
  rest << in.rdbuf();
  parts.weights = rest.str();
  return parts;
}

}  // namespace

PatchClassifier load_model(const std::string& path) {
  ModelFileParts parts = read_model_file(path);
  ModelConfig config = model_config_from_json(parts.config, path);
  PatchClassifier model(config);
  try {
    std::istringstream weights(parts.weights);
    torch::serialize::InputArchive archive;
    archive.load_from(weights);
    model->load(archive);
  } catch (const c10::Error& e) {
    throw InputError(
        fmt::format("{}: weights do not load ({})", path, first_line(e.what_without_backtrace())));
  }
  model->eval();
  return model;
}

void read_model_archive(const std::string& path, const ArchiveReader& reader) {
  ModelFileParts parts = read_model_file(path);
  try {
    std::istringstream weights(parts.weights);
    torch::serialize::InputArchive archive;
    archive.load_from(weights);
    reader(archive);
  } catch (const c10::Error& e) {
    throw InputError(
        fmt::format("{}: cannot read its state ({})", path, first_line(e.what_without_backtrace())));
  }
}

json load_model_training(const std::string& path) {
  ModelFileParts parts = read_model_file(path);
  return parts.config.contains("training") ? parts.config["training"] : json();
}

}  // namespace patchwise
