#include "patchwise/train/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "patchwise/base/error.h"
#include "patchwise/data/loader.h"
#include "patchwise/dist/distributed.h"
#include "patchwise/model/evaluation.h"
#include "patchwise/model/model_file.h"
#include "patchwise/train/ema.h"
#include "patchwise/train/optimizer.h"
#include "patchwise/train/parallel.h"
#include "patchwise/train/select.h"

namespace patchwise {
namespace {

/// Steps between reads of the running loss (each read synchronizes with the device).
constexpr int64_t kSyncInterval = 20;

using nlohmann::json;

EpochMetrics metrics_from_json(const json& j) {
  auto number = [](const json& v) {
    return v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN();
  };
  EpochMetrics m;
  m.epoch = j.at("epoch").get<int64_t>();
  m.loss = number(j.at("loss"));
  m.accuracy = number(j.at("accuracy"));
  m.test_loss = number(j.at("test_loss"));
  m.test_accuracy = number(j.at("test_accuracy"));
  m.seconds = number(j.at("seconds"));
  m.images_per_second = number(j.at("images_per_second"));
  return m;
}

/// Where a run stands: everything besides weights, optimizer and RNG that a
/// checkpoint must hold to continue exactly.
struct RunState : EpochSums {
  int64_t epoch = 1;   ///< the epoch in progress (1-based)
  int64_t step = 0;    ///< steps of it already trained
  double seconds = 0;  ///< training time of the epoch so far
  double best_accuracy = -1;
  int64_t kept_epoch = 0;
  std::vector<EpochMetrics> history;
};

json run_state_to_json(const RunState& run, const json& history) {
  return {
      {"epoch", run.epoch},
      {"step", run.step},
      {"loss_sum", run.loss_sum},
      {"correct", run.correct},
      {"seen", run.seen},
      {"seconds", run.seconds},
      {"best_accuracy", run.best_accuracy},
      {"kept_epoch", run.kept_epoch},
      {"history", history}};
}

RunState run_state_from_json(const json& st) {
  RunState run;
  run.epoch = st.at("epoch").get<int64_t>();
  run.step = st.at("step").get<int64_t>();
  run.loss_sum = st.at("loss_sum").get<double>();
  run.correct = st.at("correct").get<double>();
  run.seen = st.at("seen").get<int64_t>();
  run.seconds = st.at("seconds").get<double>();
  run.best_accuracy = st.at("best_accuracy").get<double>();
  run.kept_epoch = st.at("kept_epoch").get<int64_t>();
  for (const json& m : st.at("history")) run.history.push_back(metrics_from_json(m));
  return run;
}

/// The seed of rank `rank`'s dropout and augmentation draws: rank 0 keeps the run's
/// seed, so that its draws are a one-process run's; the others get unrelated streams.
uint64_t rank_seed(uint64_t seed, int64_t rank) {
  return seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(rank);
}

/// The model's parameters followed by its buffers.
std::vector<at::Tensor> model_state(PatchClassifier& model) {
  std::vector<at::Tensor> state = model->parameters();
  for (const auto& t : model->buffers()) state.push_back(t);
  return state;
}

/// Copies `from` (as model_state orders it) into the model's parameters and buffers.
void copy_state(PatchClassifier& model, const std::vector<at::Tensor>& from) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> to = model_state(model);
  for (size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i]);
}

/// The options against the model and the data: what check_trainer_options cannot know.
void check_options(
    PatchClassifier& model, const Dataset& train, const Dataset* test,
    const TrainerOptions& options) {
  Distributed* const dist = options.distributed;
  check_trainer_options(
      options, model->config().fusion, test != nullptr, dist != nullptr ? dist->world_size() : 1);
  const int64_t side = options.bags ? model->config().grid.input : train.height();
  check_option(
      options.augment.shift < side, "shift", "{}, expected 0..{}", options.augment.shift, side - 1);
  check_dataset_fits(model->config(), train);
  if (test != nullptr) check_dataset_fits(model->config(), *test);
  check_option(
      dist == nullptr || model->device().is_cpu(),
      "device",
      "{}: distributed training runs on the CPU (Gloo), expected cpu",
      model->device().str());
}

/// One training run, as named steps: resume, epochs of steps, evaluation, keep-best and
/// checkpoints. Data parallelism stays behind `parallel_`.
class TrainRun {
 public:
  TrainRun(
      PatchClassifier& model, const Dataset& train, const Dataset* test,
      const TrainerOptions& options, const TrainerCallbacks& callbacks)
      : model_(model),
        test_(test),
        options_(options),
        callbacks_(callbacks),
        parallel_(options.distributed, test, options.eval_bags),
        device_(model->device()) {
    torch::manual_seed(rank_seed(options.seed, parallel_.rank()));
    params_ = model->trainable_parameters();
    optimizer_ = make_optimizer(params_, options.optimizer);
    loader_ = std::make_unique<Loader>(
        train,
        options.batch,
        /*shuffle=*/true,
        options.seed,
        parallel_.rank(),
        parallel_.world(),
        options.bags);
    steps_ = loader_->num_batches();
  }

  TrainResult run() {
    if (!options_.resume.empty()) resume();
    parallel_.start(model_, options_.loss, result_);
    if (options_.ema > 0 && !ema_) {
      ema_ = std::make_unique<WeightAverage>(model_state(model_), options_.ema);
    }
    for (; run_.epoch <= options_.epochs; ++run_.epoch) {
      train_epoch();
      end_epoch();
    }
    if (options_.keep_best && run_.kept_epoch != options_.epochs) {
      copy_state(model_, best_state_);
    } else if (ema_) {
      copy_state(model_, ema_->average());
    }
    parallel_.finish(result_);
    model_->eval();
    result_.history = run_.history;
    result_.kept_epoch = run_.kept_epoch;
    return result_;
  }

 private:
  void resume();
  void resume_average(const TensorMap& saved_state);
  void train_epoch();
  void step();
  at::Tensor batch_loss(const Batch& batch);
  void after_step();
  void sync_sums();
  void end_epoch();
  void keep_if_best(const EpochMetrics& m);
  void write_checkpoint();

  /// Runs fn with the model holding the moving average's weights, when there is one.
  template <typename Fn>
  void with_average(Fn&& fn) {
    if (!ema_) return fn();
    std::vector<at::Tensor> saved;
    for (const auto& t : model_state(model_)) saved.push_back(t.detach().clone());
    copy_state(model_, ema_->average());
    fn();
    copy_state(model_, saved);
  }

  PatchClassifier& model_;
  const Dataset* test_;
  const TrainerOptions& options_;
  const TrainerCallbacks& callbacks_;
  Parallel parallel_;
  c10::Device device_;
  std::vector<at::Tensor> params_;  ///< the trained parameters
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<WeightAverage> ema_;
  std::unique_ptr<Loader> loader_;
  int64_t steps_ = 0;
  at::Generator generator_ = at::detail::getDefaultCPUGenerator();  // shares the state
  RunState run_;
  std::vector<at::Tensor> best_state_;  ///< parameters and buffers of the kept epoch
  TrainResult result_;
  at::Tensor loss_sum_, correct_;  ///< the epoch's sums, on the device between reads
  std::chrono::steady_clock::time_point start_;
};

void TrainRun::resume() {
  const std::string& file = options_.resume;
  const std::shared_ptr<const ModelFile> checkpoint =
      options_.resume_file ? options_.resume_file
                           : std::make_shared<const ModelFile>(load_model_file(file));
  PatchClassifier saved = checkpoint->model;  // shares the checkpoint's weights
  check_input(
      saved->config().backbone.name == model_->config().backbone.name &&
          saved->num_patches() == model_->num_patches(),
      "{}: holds another model than the one to train, expected its checkpoint",
      file);
  const json& state = checkpoint->training;
  check_input(
      state.is_object() && state.contains("state"),
      "{}: a model file, expected a training checkpoint",
      file);
  run_ = run_state_from_json(state["state"]);
  check_input(
      run_.step <= steps_,
      "{}: stopped at step {} of an epoch of {} steps, expected the same data and batch",
      file,
      run_.step,
      steps_);
  copy_state(model_, model_state(saved));
  const TensorMap& saved_state = checkpoint->state;
  optimizer_state_from_tensors(*optimizer_, options_.optimizer.kind, saved_state, file);
  generator_.set_state(state_tensor(saved_state, "rng_state", file));
  resume_average(saved_state);
  if (options_.keep_best) {
    const int64_t count = state_tensor(saved_state, "best_count", file).item<int64_t>();
    check_input(
        count >= 0 && count <= static_cast<int64_t>(saved_state.size()),
        "{}: a best_count of {}, expected 0..the number of parameters",
        file,
        count);
    best_state_.resize(static_cast<size_t>(count));
    for (size_t i = 0; i < best_state_.size(); ++i) {
      best_state_[i] = state_tensor(saved_state, "best_" + std::to_string(i), file).to(device_);
    }
  }
  if (parallel_.rank() > 0) {
    // The checkpoint holds rank 0's running sums (over all ranks) and random state.
    static_cast<EpochSums&>(run_) = EpochSums{};
    torch::manual_seed(rank_seed(
        options_.seed ^ static_cast<uint64_t>(run_.epoch << 32 | run_.step), parallel_.rank()));
  }
}

/// The checkpoint's moving average ("ema_<i>", "ema_updates"), when the run keeps one.
void TrainRun::resume_average(const TensorMap& saved_state) {
  if (options_.ema <= 0) return;
  const std::string& file = options_.resume;
  const std::vector<at::Tensor> state = model_state(model_);
  std::vector<at::Tensor> average;
  for (size_t i = 0; i < state.size(); ++i) {
    const at::Tensor& t = state_tensor(saved_state, "ema_" + std::to_string(i), file);
    check_input(
        t.sizes() == state[i].sizes(),
        "{}: moving average 'ema_{}' does not match its weight, expected its shape",
        file,
        i);
    average.push_back(t);
  }
  ema_ = std::make_unique<WeightAverage>(state, options_.ema);
  ema_->restore(average, state_tensor(saved_state, "ema_updates", file).item<int64_t>());
}

void TrainRun::train_epoch() {
  start_ = std::chrono::steady_clock::now();
  model_->train();
  loader_->start_epoch(run_.epoch - 1, run_.step);
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device_);
  loss_sum_ = torch::full({}, run_.loss_sum, f64);
  correct_ = torch::full({}, run_.correct, f64);
  for (Batch batch; loader_->next(batch);) {
    const int64_t b = batch.labels.size(0);
    optimizer_->zero_grad();
    parallel_.backward(
        model_,
        [&] { return batch_loss(batch); },
        b,
        loader_->batch_rows(run_.step),
        run_.epoch,
        run_.step);
    step();
    run_.seen += b;
    ++run_.step;
    after_step();
  }
  sync_sums();
  parallel_.reduce_sums(run_, /*rank0_only=*/false, run_.epoch);
}

/// The optimizer's step at the schedule's rate, after clipping; then the average's.
void TrainRun::step() {
  const int64_t done = (run_.epoch - 1) * steps_ + run_.step;
  const double lr = scheduled_lr(
      options_.schedule, options_.optimizer.lr, done, options_.epochs * steps_, steps_);
  set_learning_rate(*optimizer_, lr);
  if (options_.clip_grad_norm > 0) {
    torch::nn::utils::clip_grad_norm_(params_, options_.clip_grad_norm);
  }
  optimizer_->step();
  if (ema_) ema_->update(model_state(model_));
}

/// The batch's mean loss; its images and correct predictions go to the sums.
at::Tensor TrainRun::batch_loss(const Batch& batch) {
  at::Tensor labels = batch.labels.to(device_);
  at::Tensor images =
      options_.augment.enabled() ? augment_images(batch.images, options_.augment) : batch.images;
  PatchOutput out;
  if (batch.counts.empty()) {
    out = model_->forward(images);
  } else if (options_.select > 0) {
    Selection kept = select_tiles(model_, images, batch.counts, options_.select);
    out = model_->forward_bags(kept.tiles.to(device_), kept.counts);
  } else {
    out = model_->forward_bags(images.to(device_), batch.counts);
  }
  at::Tensor loss = compute_loss(options_.loss, out, labels, options_.label_smoothing);
  loss_sum_ += loss.detach().to(torch::kFloat64) * static_cast<double>(labels.size(0));
  correct_ += out.log_probs.detach().argmax(1).eq(labels).sum().to(torch::kFloat64);
  return loss;
}

/// Progress every kSyncInterval steps, then a stop signal or a due checkpoint.
void TrainRun::after_step() {
  if ((run_.step % kSyncInterval == 0 || run_.step == steps_) && run_.seen > 0) {
    const double running = loss_sum_.item<double>() / static_cast<double>(run_.seen);
    if (!std::isfinite(running)) {
      throw std::runtime_error(fmt::format(
          "training loss became {} at epoch {} step {}; try a lower --lr (now {})",
          running,
          run_.epoch,
          run_.step,
          options_.optimizer.lr));
    }
    if (callbacks_.on_step) callbacks_.on_step(run_.epoch, run_.step, steps_, running);
  }
  const int local = options_.stop != nullptr ? options_.stop->load() : 0;
  const int stop_signal = parallel_.stop_signal(local, run_.epoch, run_.step);
  const bool due = options_.checkpoint_every > 0 && run_.step % options_.checkpoint_every == 0 &&
                   run_.step < steps_;
  if (stop_signal != 0 || due) {
    sync_sums();
    parallel_.reduce_sums(run_, /*rank0_only=*/true, run_.epoch);
    loss_sum_.fill_(run_.loss_sum);
    correct_.fill_(run_.correct);
    write_checkpoint();
  }
  if (stop_signal != 0) {
    throw TrainingStopped(
        stop_signal,
        run_.epoch,
        run_.step,
        fmt::format("stopped at epoch {} step {}", run_.epoch, run_.step));
  }
}

/// Reads the sums off the device and adds the time since the last read.
void TrainRun::sync_sums() {
  run_.loss_sum = loss_sum_.item<double>();
  run_.correct = correct_.item<double>();
  const auto now = std::chrono::steady_clock::now();
  run_.seconds += std::chrono::duration<double>(now - start_).count();
  start_ = now;
}

/// The epoch's metrics and evaluation, keep-best, then a fresh epoch's checkpoint.
void TrainRun::end_epoch() {
  EpochMetrics m;
  m.epoch = run_.epoch;
  m.seconds = run_.seconds;
  m.loss = run_.loss_sum / static_cast<double>(run_.seen);
  m.accuracy = run_.correct / static_cast<double>(run_.seen);
  m.images_per_second = static_cast<double>(run_.seen) / std::max(m.seconds, 1e-9);
  with_average([&] {
    if (test_ != nullptr) {
      std::tie(m.test_loss, m.test_accuracy) =
          parallel_.evaluate(model_, options_.eval_batch, run_.epoch);
    }
    keep_if_best(m);
  });
  run_.history.push_back(m);
  if (callbacks_.on_epoch) callbacks_.on_epoch(m);
  run_.step = 0;
  static_cast<EpochSums&>(run_) = EpochSums{};
  run_.seconds = 0;
  if (run_.epoch < options_.epochs) {
    ++run_.epoch;  // the checkpoint names the next epoch to run
    write_checkpoint();
    --run_.epoch;
  }
}

void TrainRun::keep_if_best(const EpochMetrics& m) {
  if (options_.keep_best && !(m.test_accuracy > run_.best_accuracy)) return;
  run_.kept_epoch = run_.epoch;
  run_.best_accuracy = m.test_accuracy;
  if (!options_.keep_best) return;
  torch::NoGradGuard no_grad;
  best_state_.clear();
  for (const auto& t : model_state(model_)) best_state_.push_back(t.detach().clone());
}

void TrainRun::write_checkpoint() {
  if (options_.checkpoint.empty() || parallel_.rank() != 0) return;
  json note =
      options_.checkpoint_note.empty() ? json::object() : json::parse(options_.checkpoint_note);
  json history = json::array();
  for (const EpochMetrics& m : run_.history) history.push_back(epoch_metrics_to_json(m));
  note["history"] = history;
  note["state"] = run_state_to_json(run_, history);
  TensorMap state = optimizer_state_to_tensors(*optimizer_, options_.optimizer.kind);
  state["rng_state"] = generator_.get_state();
  state["best_count"] = torch::tensor(static_cast<int64_t>(best_state_.size()));
  if (ema_) {
    state["ema_updates"] = torch::tensor(ema_->updates());
    for (size_t i = 0; i < ema_->average().size(); ++i) {
      state["ema_" + std::to_string(i)] = ema_->average()[i];
    }
  }
  for (size_t i = 0; i < best_state_.size(); ++i) {
    state["best_" + std::to_string(i)] = best_state_[i];
  }
  save_model(options_.checkpoint, model_, note, state);
}

}  // namespace

void check_trainer_options(
    const TrainerOptions& options, FusionRule fusion, bool has_eval_set, int64_t world_size) {
  check_option(options.epochs >= 1, "epochs", "{}, expected at least 1", options.epochs);
  check_option(options.batch >= 1, "batch", "{}, expected at least 1", options.batch);
  check_optimizer_options(options.optimizer);
  check_schedule_options(options.schedule, options.epochs);
  check_label_smoothing(options.label_smoothing);
  check_ema_decay(options.ema);
  check_option(
      options.clip_grad_norm >= 0 && std::isfinite(options.clip_grad_norm),
      "clip_grad",
      "{}, expected a positive norm (0: no clipping)",
      options.clip_grad_norm);
  check_option(
      options.augment.erase >= 0 && options.augment.erase <= 1,
      "erase",
      "{}, expected a probability in [0, 1]",
      options.augment.erase);
  check_option(
      options.augment.shift >= 0, "shift", "{}, expected 0 or more", options.augment.shift);
  check_trainable(options.loss, fusion);
  check_option(
      !options.keep_best || has_eval_set,
      "keep",
      "best needs a validation set, expected last or a --val-split above 0");
  check_option(
      options.select >= 0, "select", "{}, expected 0 (every tile) or more", options.select);
  check_option(
      options.checkpoint_every >= 0,
      "checkpoint_every",
      "{}, expected >= 0",
      options.checkpoint_every);
  check_option(
      options.batch % world_size == 0,
      "batch",
      "{}, expected a multiple of the {} processes (WORLD_SIZE): the global "
      "batch is split evenly among them",
      options.batch,
      world_size);
}

json epoch_metrics_to_json(const EpochMetrics& m) {
  auto number = [](double v) { return std::isnan(v) ? json() : json(v); };
  return {
      {"epoch", m.epoch},
      {"loss", m.loss},
      {"accuracy", m.accuracy},
      {"test_loss", number(m.test_loss)},
      {"test_accuracy", number(m.test_accuracy)},
      {"seconds", m.seconds},
      {"images_per_second", m.images_per_second}};
}

TrainResult train_model(
    PatchClassifier& model, const Dataset& train, const Dataset* test,
    const TrainerOptions& options, const TrainerCallbacks& callbacks) {
  check_options(model, train, test, options);
  return TrainRun(model, train, test, options, callbacks).run();
}

}  // namespace patchwise
