#include "patchwise/core/model_file.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include <zlib.h>

#include "patchwise/core/error.h"
#include "patchwise/core/files.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kMagicSize = sizeof(kModelMagic) - 1;
constexpr size_t kLengthSize = 8;
constexpr size_t kTrailerSize = sizeof(kChecksumTag) - 1 + 4;
/// A configuration larger than this is not one we wrote.
constexpr uint64_t kMaxConfigBytes = 64u << 20;

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

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
  check_input(version >= kOldestModelFormatVersion && version <= kModelFormatVersion,
              "{}: model file format version {}, expected {} to {}", source, version,
              kOldestModelFormatVersion, kModelFormatVersion);
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

  std::string file(kModelMagic, kMagicSize);
  const uint64_t length = text.size();
  for (size_t i = 0; i < kLengthSize; ++i) file.push_back(char(uint8_t(length >> (8 * i))));
  file += text;
  file += weights.str();
  const uint32_t sum = checksum(file);
  file.append(kChecksumTag, kTrailerSize - 4);
  for (size_t i = 0; i < 4; ++i) file.push_back(char(uint8_t(sum >> (8 * i))));
  write_file_atomically(path, "model file", [&](std::ostream& out) {
    out.write(file.data(), static_cast<std::streamsize>(file.size()));
  });
}

namespace {

struct ModelFileParts {
  json config;
  std::string weights;
};

uint64_t read_le(const std::string& bytes, size_t at, size_t width) {
  uint64_t value = 0;
  for (size_t i = 0; i < width; ++i) value |= uint64_t(uint8_t(bytes[at + i])) << (8 * i);
  return value;
}

ModelFileParts read_model_file(const std::string& path) {
  check_input(fs::exists(path), "{}: no such model file", path);
  check_input(fs::is_regular_file(path), "{}: expected a model file, found a directory", path);
  std::ifstream in(path, std::ios::binary);
  check_input(in.good(), "{}: cannot open for reading", path);
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  check_input(file.compare(0, kMagicSize, kModelMagic) == 0,
              "{}: not a patchwise model file (it does not start with '{}')", path, kModelMagic);
  check_input(file.size() >= kMagicSize + kLengthSize, "{}: truncated model file header", path);

  // The checksum first: nothing of a corrupt file is parsed.
  const size_t tag_at = file.size() - kTrailerSize;
  const bool has_trailer = file.size() >= kMagicSize + kLengthSize + kTrailerSize &&
                           file.compare(tag_at, kTrailerSize - 4, kChecksumTag) == 0;
  if (has_trailer) {
    const auto stored = static_cast<uint32_t>(read_le(file, tag_at + kTrailerSize - 4, 4));
    file.resize(tag_at);
    const uint32_t computed = checksum(file);
    check_input(stored == computed,
                "{}: checksum mismatch (stored {:08x}, computed {:08x}): the file is corrupt",
                path, stored, computed);
  }

  const uint64_t length = read_le(file, kMagicSize, kLengthSize);
  const uint64_t room = file.size() - kMagicSize - kLengthSize;
  check_input(length <= kMaxConfigBytes && length <= room,
              "{}: configuration of {} bytes declared, but the file has {} bytes", path, length,
              file.size());
  ModelFileParts parts;
  try {
    parts.config = json::parse(file.substr(kMagicSize + kLengthSize, length));
  } catch (const json::exception& e) {
    throw InputError(fmt::format("{}: corrupt model configuration ({})", path, e.what()));
  }
  const json version = parts.config.is_object() ? parts.config.value("format_version", json())
                                                : json();
  check_input(has_trailer || (version.is_number_integer() && version.get<int>() == 1),
              "{}: no checksum at the end of the file: it is truncated or corrupt", path);
  parts.weights = file.substr(kMagicSize + kLengthSize + length);
  return parts;
}

/// LibTorch's archive carries TorchScript source for the types it pickles; a type
/// with methods (a __setstate__, say) would run code while loading. The archives
/// patchwise writes declare attributes only, so any method is refused unread.
void check_archive_declares_no_code(const std::string& weights, const std::string& path) {
  std::istringstream in(weights);
  caffe2::serialize::PyTorchStreamReader reader(&in);
  for (const std::string& name : reader.getAllRecords()) {
    const bool code = name.rfind("code/", 0) == 0 || name.find("/code/") != std::string::npos;
    if (!code || name.size() < 3 ||
        name.compare(name.size() - 3, 3, ".py") != 0) {
      continue;
    }
    auto [data, size] = reader.getRecord(name);
    const std::string source(static_cast<const char*>(data.get()), size);
    const size_t def = source.find("def ");
    if (def != std::string::npos) {
      throw InputError(fmt::format(
          "{}: the weights archive defines code ('{}' in {}), which patchwise never runs", path,
          first_line(source.substr(def)), name));
    }
  }
}

/// Opens the weights of a model file, refusing archives that declare code; every
/// failure of LibTorch's reader (c10::Error, TorchScript's parse errors) becomes
/// InputError naming `path` and `what`.
template <typename Use>
void with_archive(const std::string& weights, const std::string& path, const char* what,
                  const Use& use) {
  try {
    check_archive_declares_no_code(weights, path);
    std::istringstream in(weights);
    torch::serialize::InputArchive archive;
    archive.load_from(in);
    use(archive);
  } catch (const InputError&) {
    throw;
  } catch (const c10::Error& e) {
    throw InputError(fmt::format("{}: {} ({})", path, what, first_line(e.what_without_backtrace())));
  } catch (const std::exception& e) {
    throw InputError(fmt::format("{}: {} ({})", path, what, first_line(e.what())));
  }
}

/// Reads `key` of `archive` into `target` after checking what the file declares:
/// the same shape and type as `target`, and an extent inside the stored bytes.
void read_checked(torch::serialize::InputArchive& archive, const std::string& key,
                  const std::string& name, at::Tensor& target, bool is_buffer,
                  const std::string& path) {
  at::Tensor stored;
  check_input(archive.try_read(key, stored, is_buffer), "{}: weights lack '{}'", path, name);
  check_input(stored.sizes() == target.sizes(), "{}: weight '{}' has shape {}, expected {}", path,
              name, fmt::join(stored.sizes(), "x"), fmt::join(target.sizes(), "x"));
  check_input(stored.scalar_type() == target.scalar_type(),
              "{}: weight '{}' has type {}, expected {}", path, name,
              c10::toString(stored.scalar_type()), c10::toString(target.scalar_type()));
  if (stored.numel() > 0) {
    int64_t last = stored.storage_offset();
    bool strides_ok = last >= 0;
    for (int64_t d = 0; d < stored.dim(); ++d) {
      strides_ok = strides_ok && stored.stride(d) >= 0;
      last += (stored.size(d) - 1) * stored.stride(d);
    }
    const auto needed = static_cast<uint64_t>(last + 1) * stored.element_size();
    check_input(strides_ok && needed <= stored.storage().nbytes(),
                "{}: weight '{}' declares {} bytes but stores {}", path, name, needed,
                stored.storage().nbytes());
  }
  torch::NoGradGuard no_grad;
  target.copy_(stored);
}

void load_checked(torch::nn::Module& module, torch::serialize::InputArchive& archive,
                  const std::string& prefix, const std::string& path) {
  for (auto& p : module.named_parameters(/*recurse=*/false)) {
    read_checked(archive, p.key(), prefix + p.key(), p.value(), /*is_buffer=*/false, path);
  }
  for (auto& b : module.named_buffers(/*recurse=*/false)) {
    read_checked(archive, b.key(), prefix + b.key(), b.value(), /*is_buffer=*/true, path);
  }
  for (auto& child : module.named_children()) {
    torch::serialize::InputArchive sub;
    check_input(archive.try_read(child.key(), sub), "{}: weights lack '{}{}'", path, prefix,
                child.key());
    load_checked(*child.value(), sub, prefix + child.key() + ".", path);
  }
}

}  // namespace

PatchClassifier load_model(const std::string& path) {
  ModelFileParts parts = read_model_file(path);
  ModelConfig config = model_config_from_json(parts.config, path);
  PatchClassifier model(config);
  with_archive(parts.weights, path, "weights do not load",
               [&](torch::serialize::InputArchive& archive) { load_checked(*model, archive, "", path); });
  model->eval();
  return model;
}

void read_model_archive(const std::string& path, const ArchiveReader& reader) {
  ModelFileParts parts = read_model_file(path);
  with_archive(parts.weights, path, "cannot read its state", reader);
}

json load_model_training(const std::string& path) {
  ModelFileParts parts = read_model_file(path);
  return parts.config.contains("training") ? parts.config["training"] : json();
}

}  // namespace patchwise
