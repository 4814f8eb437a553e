// patchwise backbones: the registered networks, their sizes and their cost for an input.

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "patchwise/models/registry.h"

namespace patchwise::cli {
namespace {

struct BackbonesFlags {
  int64_t input = 32;
  int64_t channels = 1;
  int64_t classes = 10;
  bool json = false;
};

/// 11173962 -> "11,173,962".
std::string grouped(int64_t n) {
  std::string digits = std::to_string(n);
  for (auto i = static_cast<int64_t>(digits.size()) - 3; i > 0; i -= 3) digits.insert(i, ",");
  return digits;
}

nlohmann::json describe(const BackboneInfo& info, const BackbonesFlags& f) {
  BackboneOptions o;
  o.name = info.name;
  o.input = f.input;
  o.in_channels = f.channels;
  o.num_classes = f.classes;
  nlohmann::json j = {
      {"name", info.name}, {"summary", info.summary}, {"min_input", info.min_input}};
  if (f.input < info.min_input) return j;  // no network of that input to count
  j["parameters"] = backbone_parameters(o);
  j["macs"] = backbone_forward_macs(o);
  return j;
}

void run_backbones(const BackbonesFlags& f) {
  nlohmann::json all = nlohmann::json::array();
  for (const BackboneInfo& info : backbones()) all.push_back(describe(info, f));
  if (f.json) {
    fmt::print("{}\n", all.dump(2));
    return;
  }
  fmt::print(
      "{:<10} {:>12} {:>14}  {} (input {}x{}x{}, {} classes)\n",
      "backbone",
      "parameters",
      "MMACs/patch",
      "layers",
      f.channels,
      f.input,
      f.input,
      f.classes);
  for (const nlohmann::json& b : all) {
    const bool fits = b.contains("macs");
    fmt::print(
        "{:<10} {:>12} {:>14}  {}\n",
        b["name"].get<std::string>(),
        fits ? grouped(b["parameters"].get<int64_t>()) : "-",
        fits ? fmt::format("{:.1f}", b["macs"].get<int64_t>() / 1e6)
             : fmt::format("needs {}+", b["min_input"].get<int64_t>()),
        b["summary"].get<std::string>());
  }
}

}  // namespace

void setup_backbones(CLI::App& app) {
  auto flags = std::make_shared<BackbonesFlags>();
  CLI::App* cmd = app.add_subcommand(
      "backbones", "list the backbones --model takes, with their size and cost for an input");
  cmd->add_option("--input", flags->input, "side of the square input to count for")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--channels", flags->channels, "input channels: 1 or 3")
      ->check(CLI::IsMember({1, 3}));
  cmd->add_option("--classes", flags->classes, "number of classes")->check(CLI::Range(2, 100000));
  cmd->add_flag("--json", flags->json, "print the list as JSON");
  cmd->callback([flags] { run_backbones(*flags); });
}

}  // namespace patchwise::cli
