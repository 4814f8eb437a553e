// patchwise: patch-based image classification from the command line.
// Exit codes: 0 success, 2 bad input (a flag, a file, a value), 1 internal failure.

#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.h"
#include "patchwise/core/error.h"

namespace {

constexpr int kExitBadInput = 2;
constexpr int kExitFailure = 1;

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"patchwise: patch-based image classification"};
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();
  patchwise::cli::setup_train(app);
  patchwise::cli::setup_eval(app);
  patchwise::cli::setup_predict(app);
  patchwise::cli::setup_patches(app);
  patchwise::cli::setup_extract(app);
  patchwise::cli::setup_import(app);
  patchwise::cli::setup_heatmap(app);
  patchwise::cli::setup_report(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "patchwise: {} (see patchwise --help)\n", first_line(e.what()));
    return kExitBadInput;
  } catch (const patchwise::cli::Exit& e) {
    return e.code;
  } catch (const patchwise::InputError& e) {
    fmt::print(stderr, "patchwise: error: {}\n", first_line(e.what()));
    return kExitBadInput;
  } catch (const std::exception& e) {
    fmt::print(stderr, "patchwise: internal error: {}\n", first_line(e.what()));
    return kExitFailure;
  }
  return 0;
}
