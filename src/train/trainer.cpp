#include "patchwise/train/trainer.h"

#include <chrono>
#include <cmath>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "patchwise/core/error.h"
#include "patchwise/core/model_file.h"
#include "patchwise/data/loader.h"
#include "patchwise/report/evaluation.h"
#include "patchwise/dist/distributed.h"
#include "patchwise/train/optimizer.h"
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
struct RunState {
  int64_t epoch = 1;  ///< the epoch in progress (1-based)
  int64_t step = 0;   ///< steps of it already trained
  double loss_sum = 0;
  double correct = 0;
  int64_t seen = 0;
  double seconds = 0;  ///< training time of the epoch so far
  double best_accuracy = -1;
  int64_t kept_epoch = 0;
  std::vector<EpochMetrics> history;
};

/// Items shard, shard + shards, ... of `data`: one rank's part of an evaluation set.
Dataset strided_shard(const Dataset& data, int64_t shard, int64_t shards) {
  std::vector<int64_t> index;
  for (int64_t i = shard; i < data.size(); i += shards) index.push_back(i);
  return subset(data, index);
}

/// The seed of rank `rank`'s dropout and augmentation draws: rank 0 keeps the run's
/// seed, so that its draws are a one-process run's; the others get unrelated streams.
uint64_t rank_seed(uint64_t seed, int64_t rank) {
  return seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(rank);
}

}  // namespace

json epoch_metrics_to_json(const EpochMetrics& m) {
  auto number = [](double v) { return std::isnan(v) ? json() : json(v); };
  return {{"epoch", m.epoch},
          {"loss", m.loss},
          {"accuracy", m.accuracy},
          {"test_loss", number(m.test_loss)},
          {"test_accuracy", number(m.test_accuracy)},
          {"seconds", m.seconds},
          {"images_per_second", m.images_per_second}};
}

TrainResult train_model(PatchClassifier& model, const Dataset& train, const Dataset* test,
                        const TrainerOptions& options, const TrainerCallbacks& callbacks) {
  check_option(options.epochs >= 1, "epochs", "{}, expected at least 1", options.epochs);
  check_option(options.batch >= 1, "batch", "{}, expected at least 1", options.batch);
  check_optimizer_options(options.optimizer);
  check_trainable(options.loss, model->config().fusion);
  check_option(!options.keep_best || test != nullptr, "keep",
              "best needs a validation set, expected one (val-split)");
  const int64_t side = options.bags ? model->config().grid.input : train.height();
  check_option(options.augment.shift >= 0 && options.augment.shift < side, "shift",
              "{}, expected 0..{}", options.augment.shift, side - 1);
  check_option(options.select >= 0, "select", "{}, expected 0 (every tile) or more",
               options.select);
  check_option(options.checkpoint_every >= 0, "checkpoint_every", "{}, expected >= 0",
              options.checkpoint_every);
  check_dataset_fits(model->config(), train);
  if (test != nullptr) check_dataset_fits(model->config(), *test);
  Distributed* const dist = options.distributed;
  const int64_t world = dist != nullptr ? dist->world_size() : 1;
  const int64_t rank = dist != nullptr ? dist->rank() : 0;
  check_option(options.batch % world == 0, "batch",
              "{}, expected a multiple of the {} processes (WORLD_SIZE): the global "
              "batch is split evenly among them",
              options.batch, world);
  check_option(dist == nullptr || model->device().is_cpu(), "device",
              "{}: distributed training runs on the CPU (Gloo), expected cpu",
              model->device().str());

  torch::manual_seed(rank_seed(options.seed, rank));
  const c10::Device device = model->device();
  std::unique_ptr<torch::optim::Optimizer> optimizer_owner =
      make_optimizer(model->parameters(), options.optimizer);
  torch::optim::Optimizer& optimizer = *optimizer_owner;
  Loader loader(train, options.batch, /*shuffle=*/true, options.seed, rank, world, options.bags);
  const int64_t steps = loader.num_batches();
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);
  at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle: shares the state

  RunState run;
  std::vector<at::Tensor> best_state;  // parameters and buffers of the kept epoch
  auto snapshot_best = [&] {
    torch::NoGradGuard no_grad;
    best_state.clear();
    for (const auto& t : model->parameters()) best_state.push_back(t.detach().clone());
    for (const auto& t : model->buffers()) best_state.push_back(t.detach().clone());
  };

  if (!options.resume.empty()) {
    PatchClassifier saved = load_model(options.resume);
    check_input(saved->config().backbone.name == model->config().backbone.name &&
                    saved->num_patches() == model->num_patches(),
                "{}: holds another model than the one to train, expected its checkpoint", options.resume);
    json state = load_model_training(options.resume);
    check_input(state.is_object() && state.contains("state"),
                "{}: a model file, expected a training checkpoint", options.resume);
    const json& st = state["state"];
    run.epoch = st.at("epoch").get<int64_t>();
    run.step = st.at("step").get<int64_t>();
    run.loss_sum = st.at("loss_sum").get<double>();
    run.correct = st.at("correct").get<double>();
    run.seen = st.at("seen").get<int64_t>();
    run.seconds = st.at("seconds").get<double>();
    run.best_accuracy = st.at("best_accuracy").get<double>();
    run.kept_epoch = st.at("kept_epoch").get<int64_t>();
    for (const json& m : st.at("history")) run.history.push_back(metrics_from_json(m));
    check_input(run.step <= steps, "{}: stopped at step {} of an epoch of {} steps, expected "
                "the same data and batch", options.resume, run.step, steps);
    {
      torch::NoGradGuard no_grad;
      auto from = saved->parameters();
      auto to = model->parameters();
      for (size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i]);
      auto bfrom = saved->buffers();
      auto bto = model->buffers();
      for (size_t i = 0; i < bto.size(); ++i) bto[i].copy_(bfrom[i]);
    }
    const TensorMap saved_state = load_model_state(options.resume);
    optimizer_state_from_tensors(optimizer, options.optimizer.kind, saved_state, options.resume);
    generator.set_state(state_tensor(saved_state, "rng_state", options.resume));
    if (options.keep_best) {
      const int64_t count = state_tensor(saved_state, "best_count", options.resume).item<int64_t>();
      check_input(count >= 0 && count <= static_cast<int64_t>(saved_state.size()),
                  "{}: a best_count of {}, expected 0..the number of parameters", options.resume, count);
      best_state.resize(static_cast<size_t>(count));
      for (size_t i = 0; i < best_state.size(); ++i) {
        best_state[i] =
            state_tensor(saved_state, "best_" + std::to_string(i), options.resume).to(device);
      }
    }
    if (rank > 0) {
      // The checkpoint holds rank 0's running sums (over all ranks) and random state.
      run.loss_sum = run.correct = 0;
      run.seen = 0;
      torch::manual_seed(rank_seed(options.seed ^ static_cast<uint64_t>(run.epoch << 32 | run.step),
                                   rank));
    }
  }

  TrainResult result;
  const Dataset* eval_data = test;
  Dataset eval_shard;
  BagFn eval_shard_bags;
  double backward_seconds = 0;
  int64_t backward_steps = 0;
  if (dist != nullptr) {
    // As DDP starts: every rank continues from rank 0's weights and buffers, then the
    // Reducer takes over the gradients.
    std::vector<at::Tensor> state = model->parameters();
    for (const auto& t : model->buffers()) state.push_back(t);
    dist->broadcast(state);
    std::vector<std::string> names;
    for (const auto& item : model->named_parameters()) names.push_back(item.key());
    // The fused loss through a learned rule leaves the patch-logit layer out of the graph.
    const bool find_unused =
        options.loss == LossKind::kFused && fusion_rule_is_learned(model->config().fusion);
    dist->attach_gradients(model->parameters(), names, find_unused);
    for (const auto& p : model->parameters()) result.gradient_floats += p.numel();
    result.gradient_buckets = dist->buckets();
    result.allreduce_ms = dist->time_allreduce(result.gradient_floats, 20);
    if (test != nullptr) {
      eval_shard = strided_shard(*test, rank, world);
      eval_data = &eval_shard;
      if (options.eval_bags) {  // the shard's item i is the set's rank + i * world
        eval_shard_bags = [bags = options.eval_bags, rank, world](int64_t i) {
          return bags(rank + i * world);
        };
      }
    }
  }
  // Sums the running metrics over the ranks. `rank0_only`: a checkpoint's partial sums,
  // kept by rank 0 alone so that the epoch's final sum counts them once.
  auto reduce_sums = [&](bool rank0_only) {
    at::Tensor sums = torch::tensor({run.loss_sum, run.correct, static_cast<double>(run.seen)},
                                    torch::kFloat64);
    dist->allreduce_sum(sums, fmt::format("the sums of the metrics of epoch {}", run.epoch));
    const bool keep = rank == 0 || !rank0_only;
    run.loss_sum = keep ? sums[0].item<double>() : 0;
    run.correct = keep ? sums[1].item<double>() : 0;
    run.seen = keep ? std::llround(sums[2].item<double>()) : 0;
  };

  auto write_checkpoint = [&] {
    if (options.checkpoint.empty() || rank != 0) return;
    json note = options.checkpoint_note.empty() ? json::object() : json::parse(options.checkpoint_note);
    json history = json::array();
    for (const EpochMetrics& m : run.history) history.push_back(epoch_metrics_to_json(m));
    note["history"] = history;
    note["state"] = {{"epoch", run.epoch},         {"step", run.step},
                     {"loss_sum", run.loss_sum},   {"correct", run.correct},
                     {"seen", run.seen},           {"seconds", run.seconds},
                     {"best_accuracy", run.best_accuracy},
                     {"kept_epoch", run.kept_epoch}, {"history", history}};
    TensorMap state = optimizer_state_to_tensors(optimizer, options.optimizer.kind);
    state["rng_state"] = generator.get_state();
    state["best_count"] = torch::tensor(static_cast<int64_t>(best_state.size()));
    for (size_t i = 0; i < best_state.size(); ++i) {
      state["best_" + std::to_string(i)] = best_state[i];
    }
    save_model(options.checkpoint, model, note, state);
  };

  for (; run.epoch <= options.epochs; ++run.epoch) {
    auto start = std::chrono::steady_clock::now();
    model->train();
    loader.start_epoch(run.epoch - 1, run.step);
    // Sums stay on the device between the throttled reads.
    at::Tensor loss_sum = torch::full({}, run.loss_sum, f64);
    at::Tensor correct = torch::full({}, run.correct, f64);
    auto sync = [&] {
      run.loss_sum = loss_sum.item<double>();
      run.correct = correct.item<double>();
      const auto now = std::chrono::steady_clock::now();
      run.seconds += std::chrono::duration<double>(now - start).count();
      start = now;
    };
    // The batch's mean loss, its images and correct predictions added to the sums.
    auto batch_loss = [&](const Batch& batch) {
      at::Tensor labels = batch.labels.to(device);
      at::Tensor images = options.augment.enabled()
                              ? augment_images(batch.images, options.augment)
                              : batch.images;
      PatchOutput out;
      if (batch.counts.empty()) {
        out = model->forward(images);
      } else if (options.select > 0) {
        Selection kept = select_tiles(model, images, batch.counts, options.select);
        out = model->forward_bags(kept.tiles.to(device), kept.counts);
      } else {
        out = model->forward_bags(images.to(device), batch.counts);
      }
      at::Tensor loss = compute_loss(options.loss, out, labels);
      loss_sum += loss.detach().to(torch::kFloat64) * static_cast<double>(labels.size(0));
      correct += out.log_probs.detach().argmax(1).eq(labels).sum().to(torch::kFloat64);
      return loss;
    };
    for (Batch batch; loader.next(batch);) {
      const int64_t b = batch.labels.size(0);
      if (dist == nullptr) {
        at::Tensor loss = batch_loss(batch);
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
      } else {
        // This rank's b of the batch's `rows` images. The Reducer averages the ranks'
        // gradients, so each rank's mean loss is weighted by b * world / rows: the
        // average is then the gradient of the mean over all rows images, exactly one
        // process's step, even for a last batch that does not split evenly.
        const int64_t rows = loader.batch_rows(run.step);
        dist->before_forward();
        at::Tensor objective;
        if (b > 0) {
          at::Tensor loss = batch_loss(batch);
          objective = b * world == rows ? loss
                                        : loss * (static_cast<double>(b * world) / rows);
        } else {
          // None of this batch is ours, but the Reducer needs every parameter's
          // gradient (zero) so that this rank joins the same allreduces.
          objective = torch::zeros({}, torch::TensorOptions().device(device));
          for (const auto& p : model->parameters()) objective = objective + p.sum() * 0.0;
        }
        dist->before_backward(objective);
        optimizer.zero_grad();
        const auto backward_start = std::chrono::steady_clock::now();
        dist->guard(fmt::format("the backward pass of epoch {} step {}", run.epoch, run.step + 1),
                    [&] { objective.backward(); });
        backward_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - backward_start)
                .count();
        ++backward_steps;
        optimizer.step();
      }

      run.seen += b;
      ++run.step;
      if ((run.step % kSyncInterval == 0 || run.step == steps) && run.seen > 0) {
        const double running = loss_sum.item<double>() / static_cast<double>(run.seen);
        if (!std::isfinite(running)) {
          throw std::runtime_error(fmt::format(
              "training loss became {} at epoch {} step {}; try a lower --lr (now {})", running,
              run.epoch, run.step, options.optimizer.lr));
        }
        if (callbacks.on_step) callbacks.on_step(run.epoch, run.step, steps, running);
      }
      int stop_signal = options.stop != nullptr ? options.stop->load() : 0;
      // A signal on any rank stops them all after this same step.
      if (dist != nullptr) {
        stop_signal = static_cast<int>(dist->allreduce_max(
            stop_signal, fmt::format("the step-end allreduce of epoch {} step {}", run.epoch, run.step)));
      }
      const bool stopping = stop_signal != 0;
      const bool due = options.checkpoint_every > 0 && run.step % options.checkpoint_every == 0 &&
                       run.step < steps;
      if (stopping || due) {
        sync();
        if (dist != nullptr) {
          reduce_sums(/*rank0_only=*/true);
          loss_sum.fill_(run.loss_sum);
          correct.fill_(run.correct);
        }
        write_checkpoint();
      }
      if (stopping) {
        throw TrainingStopped(stop_signal, run.epoch, run.step,
                              fmt::format("stopped at epoch {} step {}", run.epoch, run.step));
      }
    }
    sync();
    if (dist != nullptr) reduce_sums(/*rank0_only=*/false);
    EpochMetrics m;
    m.epoch = run.epoch;
    m.seconds = run.seconds;
    m.loss = run.loss_sum / static_cast<double>(run.seen);
    m.accuracy = run.correct / static_cast<double>(run.seen);
    m.images_per_second = static_cast<double>(run.seen) / std::max(m.seconds, 1e-9);
    if (test != nullptr && dist == nullptr) {
      Evaluation e = evaluate(model, *test, options.eval_batch, false, options.eval_bags);
      m.test_loss = e.loss;
      m.test_accuracy = e.accuracy;
    } else if (test != nullptr) {
      // Each rank scores its shard; the sums make the whole set's mean loss and accuracy.
      at::Tensor sums = torch::zeros({3}, torch::kFloat64);
      if (eval_data->size() > 0) {
        Evaluation e = evaluate(model, *eval_data, options.eval_batch, false, eval_shard_bags);
        const double n = static_cast<double>(e.n);
        sums = torch::tensor({n, e.loss * n, e.accuracy * n}, torch::kFloat64);
      }
      dist->allreduce_sum(sums, fmt::format("the evaluation after epoch {}", run.epoch));
      const double n = sums[0].item<double>();
      m.test_loss = sums[1].item<double>() / n;
      m.test_accuracy = sums[2].item<double>() / n;
    }
    run.history.push_back(m);
    if (!options.keep_best || m.test_accuracy > run.best_accuracy) {
      run.kept_epoch = run.epoch;
      run.best_accuracy = m.test_accuracy;
      if (options.keep_best) snapshot_best();
    }
    if (callbacks.on_epoch) callbacks.on_epoch(m);
    run.step = 0;
    run.loss_sum = run.correct = run.seconds = 0;
    run.seen = 0;
    if (run.epoch < options.epochs) {
      ++run.epoch;  // the checkpoint names the next epoch to run
      write_checkpoint();
      --run.epoch;
    }
  }
  if (options.keep_best && run.kept_epoch != options.epochs) {
    torch::NoGradGuard no_grad;
    size_t i = 0;
    for (auto& t : model->parameters()) t.copy_(best_state[i++]);
    for (auto& t : model->buffers()) t.copy_(best_state[i++]);
  }
  if (dist != nullptr) {
    dist->barrier();  // nobody leaves while a peer still needs it
    result.backward_ms = 1000.0 * backward_seconds / static_cast<double>(std::max<int64_t>(backward_steps, 1));
  }
  model->eval();
  result.history = run.history;
  result.kept_epoch = run.kept_epoch;
  return result;
}

}  // namespace patchwise
