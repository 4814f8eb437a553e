#pragma once
// One function per subcommand: it declares the flags on `app` and registers the
// callback that runs the subcommand after parsing.

#include <CLI/CLI.hpp>

namespace patchwise::cli {

/// Thrown by a subcommand to end the process with `code` after it has said why.
struct Exit {
  int code;
};

void setup_train(CLI::App& app);
void setup_eval(CLI::App& app);
void setup_predict(CLI::App& app);
void setup_patches(CLI::App& app);
void setup_extract(CLI::App& app);
void setup_import(CLI::App& app);
void setup_heatmap(CLI::App& app);
void setup_report(CLI::App& app);
void setup_tiles(CLI::App& app);
void setup_features(CLI::App& app);
void setup_serve(CLI::App& app);
void setup_backbones(CLI::App& app);
void setup_export(CLI::App& app);

}  // namespace patchwise::cli
