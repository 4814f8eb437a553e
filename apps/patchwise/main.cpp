// patchwise: patch-based image classification from the command line.
// Exit codes: 0 success, 2 bad input (a flag, a file, a value), 1 internal failure or a
// data-parallel run whose peers failed.

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.h"
#include "patchwise/base/cpu_allocator.h"
#include "patchwise/base/error.h"
#include "patchwise/base/json_text.h"
#include "patchwise/base/version.h"
#include "patchwise/dist/distributed.h"

namespace {

constexpr int kExitBadInput = 2;
constexpr int kExitFailure = 1;

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

/// Under torchrun: the error file its agent reads to name the root cause of a failed
/// run (the schema of torch.distributed.elastic's ErrorHandler).
void write_torchelastic_error_file(const std::string& message) {
  const char* path = std::getenv("TORCHELASTIC_ERROR_FILE");
  if (path == nullptr || *path == '\0') return;
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  nlohmann::json error = {
      {"message",
       {{"message", message},
        {"extraInfo",
         {{"py_callstack", message},
          {"timestamp",
           std::to_string(std::chrono::duration_cast<std::chrono::seconds>(now).count())}}}}}};
  std::ofstream(path) << patchwise::json_text(error) << "\n";
}

/// The flag that sets a library option: "--" and the name with dashes, but for the
/// options whose flag says it otherwise.
std::string flag_of(std::string option) {
  if (option == "backbone") return "--model";
  std::replace(option.begin(), option.end(), '_', '-');
  return "--" + option;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"patchwise: patch-based image classification"};
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();
  app.set_version_flag(
      "--version",
      [] { return patchwise::version_report(); },
      "print patchwise's version, LibTorch's and what they were built with, and exit");
  patchwise::cli::setup_train(app);
  patchwise::cli::setup_eval(app);
  patchwise::cli::setup_predict(app);
  patchwise::cli::setup_patches(app);
  patchwise::cli::setup_extract(app);
  patchwise::cli::setup_import(app);
  patchwise::cli::setup_heatmap(app);
  patchwise::cli::setup_report(app);
  patchwise::cli::setup_tiles(app);
  patchwise::cli::setup_features(app);
  patchwise::cli::setup_serve(app);
  patchwise::cli::setup_backbones(app);
  patchwise::cli::setup_export(app);
  try {
    patchwise::use_cpu_allocator_from_environment(patchwise::kDefaultCpuCacheBytes);
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    fmt::print("{}", e.what());
    return 0;
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "patchwise: {} (see patchwise --help)\n", first_line(e.what()));
    return kExitBadInput;
  } catch (const patchwise::cli::Exit& e) {
    return e.code;
  } catch (const patchwise::OptionError& e) {
    // The library names the option; the user set it with a flag.
    const std::string message = fmt::format("{}: {}", flag_of(e.option()), first_line(e.detail()));
    fmt::print(stderr, "patchwise: error: {}\n", message);
    write_torchelastic_error_file(message);
    return kExitBadInput;
  } catch (const patchwise::InputError& e) {
    fmt::print(stderr, "patchwise: error: {}\n", first_line(e.what()));
    write_torchelastic_error_file(first_line(e.what()));
    return kExitBadInput;
  } catch (const patchwise::DistributedError& e) {
    // A peer died, hung or never arrived: not this process's bug, but a failed run.
    fmt::print(stderr, "patchwise: error: {}\n", first_line(e.what()));
    write_torchelastic_error_file(first_line(e.what()));
    return kExitFailure;
  } catch (const std::exception& e) {
    fmt::print(stderr, "patchwise: internal error: {}\n", first_line(e.what()));
    return kExitFailure;
  }
  return 0;
}
