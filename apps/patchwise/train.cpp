// patchwise train: fits a PatchClassifier on a data set (or its head on a feature cache)
// and saves it.

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "commands.h"
#include "common.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/base/runtime.h"
#include "patchwise/dist/distributed.h"
#include "patchwise/model/model_file.h"
#include "patchwise/train/train_job.h"
#include "patchwise/train/trainer.h"
#include "train_flags.h"

namespace patchwise::cli {
namespace {

/// Swallows what ranks other than 0 would log.
class NullBuffer : public std::streambuf {
 protected:
  int overflow(int c) override { return c == EOF ? 0 : c; }
};

/// The signal that asked training to stop (0: none).
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int signal) { g_stop_signal.store(signal); }

/// "--data DIR" or "--features FILE": where the run's images come from, for messages.
std::string source_flags(const TrainFlags& f) {
  return f.job.features.empty() ? "--data " + f.job.data : "--features " + f.job.features;
}

/// What only the command line knows: the flags given with --features, the outputs.
void check_command_line(
    const TrainFlags& f, const TrainJobOptions& job, const CLI::App* app, bool writer) {
  check_input(
      f.dist_timeout > 0 && std::isfinite(f.dist_timeout),
      "--dist-timeout: {}, expected a positive number of seconds",
      f.dist_timeout);
  check_feature_flags(f, app);
  if (!writer) return;
  check_output_writable(job.out, "--out");
  if (!job.metrics.empty()) check_output_writable(job.metrics, "--metrics");
  check_output_writable(job.trainer.checkpoint, "--checkpoint");
}

/// The shared flag groups (grid, data, tiles, runtime) into the job's options.
void finish_job(TrainFlags& f, const CLI::App* app, const DistributedConfig& dist) {
  TrainJobOptions& job = f.job;
  job.model.grid = grid_options(f.grid, app);
  job.model.tiles = f.tiles.tiles;
  job.reader = f.tiles.reader;
  job.data_options = data_options(f.data_flags, 0);
  job.in_memory_limit_mb = f.data_flags.in_memory_limit;
  job.world_size = dist.world_size;
  job.device = resolve_device(f.runtime.device);
  job.precision = runtime_precision(f.runtime, job.device);
  job.trainer.stop = &g_stop_signal;
}

/// The process group of a data-parallel run (null for one process), announced on `log`.
std::unique_ptr<Distributed> join_group(
    const DistributedConfig& config, const TrainFlags& f, std::ostream& log) {
  if (!config.enabled()) return nullptr;
  fmt::print(
      log,
      "train: data-parallel: {} processes (rendezvous {}:{}, timeout {} s), {} "
      "images of each batch per process\n",
      config.world_size,
      config.master_addr,
      config.master_port,
      f.dist_timeout,
      f.job.trainer.batch / config.world_size);
  log.flush();
  return std::make_unique<Distributed>(config);
}

/// Says where the checkpoint is and how to continue; ends the process.
[[noreturn]] void stopped(
    const TrainFlags& f, const std::string& checkpoint, const TrainingStopped& s, bool writer) {
  if (writer) {
    fmt::print(
        stderr,
        "train: stopped by signal {} at epoch {} step {}; checkpoint {}; continue with "
        "patchwise train {} --resume {} --out {}\n",
        s.signal,
        s.epoch,
        s.step,
        checkpoint,
        source_flags(f),
        checkpoint,
        f.job.out);
  }
  throw Exit{128 + s.signal};
}

/// Trains with progress on the terminal and one line (and JSON object) per epoch; a stop
/// signal or a peer's failure ends the process after saying where the checkpoint is.
TrainResult run_epochs(
    const TrainFlags& f, TrainJob& job, Distributed* group, bool writer, std::ostream& log) {
  ProgressBar bar("train");
  TrainerCallbacks callbacks;
  if (writer)
    callbacks.on_step = [&](int64_t epoch, int64_t step, int64_t steps, double loss) {
      bar.update(step, steps, fmt::format("epoch {} loss {:.4f}", epoch, loss));
    };
  callbacks.on_epoch = [&](const EpochMetrics& m) {
    bar.clear();
    log << epoch_line(m, f.job.val_split > 0) << std::endl;
    if (writer) job.sets().tally->say_once("train", f.tiles.tiles.min_foreground);
  };
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  try {
    return job.train(callbacks, group);
  } catch (const DistributedError& e) {
    std::error_code ignored;
    const std::string& checkpoint = job.options().trainer.checkpoint;
    const bool saved = writer && std::filesystem::exists(checkpoint, ignored);
    throw DistributedError(fmt::format(
        "{}; no model written{}", e.what(), saved ? "; last checkpoint " + checkpoint : ""));
  } catch (const TrainingStopped& s) {
    bar.clear();
    stopped(f, job.options().trainer.checkpoint, s, writer);
  }
}

/// The kept epoch's test accuracy, logged when scored afresh; then the model is saved.
void finish(const TrainFlags& f, TrainJob& job, const TrainResult& result, std::ostream& log) {
  double accuracy = result.history.back().test_accuracy;
  if (const std::optional<Evaluation> e = job.final_test()) {
    fmt::print(
        log,
        "train: kept epoch {}; test accuracy {:.4f} ± {:.4f} on {} images\n",
        result.kept_epoch,
        e->accuracy,
        e->accuracy_stderr,
        e->n);
    accuracy = e->accuracy;
  }
  const nlohmann::json epochs = job.save(result);
  fmt::print(log, "train: saved {}\n", f.job.out);
  if (f.json) {
    print_json(
        {{"model", f.job.out},
         {"test_accuracy", accuracy},
         {"kept_epoch", result.kept_epoch},
         {"history", epochs}});
  }
}

/// This machine's thread count: --threads, or its share of the cores among the
/// data-parallel processes on it.
int64_t train_threads(const TrainFlags& f, const DistributedConfig& dist) {
  RuntimeFlags runtime = f.runtime;
  if (runtime.threads <= 0 && dist.enabled()) {
    const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
    runtime.threads = std::max<int64_t>(1, cores / dist.local_world_size);
  }
  return apply_runtime_flags(runtime);
}

void run_train(TrainFlags f, const CLI::App* app) {
  // torchrun's variables; WORLD_SIZE unset or 1 is a plain one-process run.
  DistributedConfig dist_config = distributed_config_from_env();
  dist_config.timeout_seconds = f.dist_timeout;
  // Rank 0 logs and writes every file; the others only train.
  const bool writer = dist_config.rank == 0;
  resume_flags(f, app);
  apply_recipe(f, app);
  finish_job(f, app, dist_config);
  f.runtime.threads = train_threads(f, dist_config);  // stored: --resume runs with as many
  f.job.record = {{"flags", flags_to_json(f)}};
  if (!writer) f.job.metrics.clear();
  TrainJob job(f.job);  // every rule between the options, before any data is read
  check_command_line(f, job.options(), app, writer);

  job.prepare();
  if (writer) warn_skipped(job.sets().skipped, f.job.data);
  NullBuffer null_buffer;
  std::ostream silent(&null_buffer);
  std::ostream& log = !writer ? silent : f.json ? std::cerr : std::cout;
  for (const std::string& line : job.plan(f.runtime.threads)) log << line << '\n';
  log.flush();
  std::unique_ptr<Distributed> dist = join_group(dist_config, f, log);
  const TrainResult result = run_epochs(f, job, dist.get(), writer, log);
  if (!writer) return;
  if (dist) log << data_parallel_line(result) << '\n';
  finish(f, job, result, log);
}

}  // namespace

void setup_train(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  CLI::App* cmd = app.add_subcommand(
      "train", "train a patch classifier on a data set (or its head on a feature cache)");
  add_train_flags(cmd, *flags);
  cmd->callback([flags, cmd] {
    flags->job.model.tiled = cmd->count("--tile") > 0;
    // Bags have one label for many tiles: the fused loss is the natural default there.
    if ((flags->job.model.tiled || !flags->job.features.empty()) && cmd->count("--loss") == 0) {
      flags->job.trainer.loss = LossKind::kFused;
    }
    run_train(*flags, cmd);
  });
}

}  // namespace patchwise::cli
