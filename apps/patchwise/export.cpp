// patchwise export: a model's weights for PyTorch (torch.load) and its configuration.

#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/model/model_file.h"
#include "patchwise/model/torch_export.h"

namespace patchwise::cli {
namespace {

struct ExportFlags {
  std::string model;
  std::string out;
  std::string config;
};

/// model.pt -> model.json; anything else gets ".json" appended.
std::string default_config_path(const std::string& out) {
  std::filesystem::path path(out);
  if (path.extension() == ".pt") return path.replace_extension(".json").string();
  return out + ".json";
}

void run_export(const ExportFlags& f) {
  const std::string config = f.config.empty() ? default_config_path(f.out) : f.config;
  check_input(config != f.out, "--config: {} is also --out, expected two different files", config);
  check_output_writable(f.out, "--out");
  check_output_writable(config, "--config");
  PatchClassifier model = load_model(f.model);
  const nlohmann::json written = export_model(model, f.out, config);
  fmt::print(
      stderr,
      "export: wrote {} ({} tensors, torch.load reads it as a state dict) and {}\n",
      f.out,
      written["state_dict"].size(),
      config);
}

}  // namespace

void setup_export(CLI::App& app) {
  auto flags = std::make_shared<ExportFlags>();
  CLI::App* cmd = app.add_subcommand(
      "export",
      "write a model's weights as a PyTorch state dict (torch.load) and its configuration "
      "as JSON");
  cmd->add_option("-m,--model", flags->model, "model file")->required();
  cmd->add_option("-o,--out", flags->out, "state dict to write (torch.save's format)")->required();
  cmd->add_option(
      "--config", flags->config, "configuration JSON to write; default: OUT with .json for .pt");
  cmd->callback([flags] { run_export(*flags); });
}

}  // namespace patchwise::cli
