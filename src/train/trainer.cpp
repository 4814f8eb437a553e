#include "patchwise/train/trainer.h"

#include <chrono>
#include <cmath>
#include <stdexcept>

#include <torch/torch.h>

#include "patchwise/core/error.h"
#include "patchwise/data/loader.h"
#include "patchwise/report/evaluation.h"

namespace patchwise {
namespace {

/// Steps between reads of the running loss (each read synchronizes with the device).
constexpr int64_t kSyncInterval = 20;

}  // namespace

TrainResult train_model(PatchClassifier& model, const Dataset& train, const Dataset* test,
                        const TrainerOptions& options, const TrainerCallbacks& callbacks) {
  check_input(options.epochs >= 1, "--epochs: {}, expected at least 1", options.epochs);
  check_input(options.batch >= 1, "--batch: {}, expected at least 1", options.batch);
  check_input(options.lr > 0 && std::isfinite(options.lr), "--lr: {}, expected a positive number",
              options.lr);
  check_trainable(options.loss, model->config().fusion);
  check_input(!options.keep_best || test != nullptr,
              "--keep best: needs a validation set (--val-split)");
  check_input(options.augment.shift >= 0 && options.augment.shift < train.height(),
              "--shift: {}, expected 0..{}", options.augment.shift, train.height() - 1);
  check_dataset_fits(model->config(), train);
  if (test != nullptr) check_dataset_fits(model->config(), *test);

  torch::manual_seed(options.seed);
  const c10::Device device = model->device();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(options.lr));
  Loader loader(train, options.batch, /*shuffle=*/true, options.seed);
  const int64_t steps = loader.num_batches();
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);

  TrainResult result;
  std::vector<EpochMetrics>& history = result.history;
  double best_accuracy = -1;
  std::vector<at::Tensor> best_state;  // parameters and buffers of the kept epoch
  for (int64_t epoch = 1; epoch <= options.epochs; ++epoch) {
    const auto start = std::chrono::steady_clock::now();
    model->train();
    loader.start_epoch(epoch - 1);
    at::Tensor loss_sum = torch::zeros({}, f64);
    at::Tensor correct = torch::zeros({}, f64);
    int64_t seen = 0;
    int64_t step = 0;
    for (Batch batch; loader.next(batch);) {
      at::Tensor labels = batch.labels.to(device);
      at::Tensor images = options.augment.enabled() ? augment_images(batch.images, options.augment)
                                                    : batch.images;
      PatchOutput out = model->forward(images);
      at::Tensor loss = compute_loss(options.loss, out, labels);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();

      const int64_t b = labels.size(0);
      seen += b;
      ++step;
      loss_sum += loss.detach().to(torch::kFloat64) * static_cast<double>(b);
      correct += out.log_probs.detach().argmax(1).eq(labels).sum().to(torch::kFloat64);
      if (step % kSyncInterval == 0 || step == steps) {
        const double running = loss_sum.item<double>() / static_cast<double>(seen);
        if (!std::isfinite(running)) {
          throw std::runtime_error(fmt::format(
              "training loss became {} at epoch {} step {}; try a lower --lr (now {})", running,
              epoch, step, options.lr));
        }
        if (callbacks.on_step) callbacks.on_step(epoch, step, steps, running);
      }
    }
    EpochMetrics m;
    m.epoch = epoch;
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    m.loss = loss_sum.item<double>() / static_cast<double>(seen);
    m.accuracy = correct.item<double>() / static_cast<double>(seen);
    m.images_per_second = static_cast<double>(seen) / m.seconds;
    if (test != nullptr) {
      Evaluation e = evaluate(model, *test, options.eval_batch);
      m.test_loss = e.loss;
      m.test_accuracy = e.accuracy;
    }
    history.push_back(m);
    if (!options.keep_best || m.test_accuracy > best_accuracy) {
      result.kept_epoch = epoch;
      best_accuracy = m.test_accuracy;
      if (options.keep_best) {
        best_state.clear();
        torch::NoGradGuard no_grad;
        for (const auto& t : model->parameters()) best_state.push_back(t.detach().clone());
        for (const auto& t : model->buffers()) best_state.push_back(t.detach().clone());
      }
    }
    if (callbacks.on_epoch) callbacks.on_epoch(m);
  }
  if (options.keep_best && result.kept_epoch != options.epochs) {
    torch::NoGradGuard no_grad;
    size_t i = 0;
    for (auto& t : model->parameters()) t.copy_(best_state[i++]);
    for (auto& t : model->buffers()) t.copy_(best_state[i++]);
  }
  model->eval();
  return result;
}

}  // namespace patchwise
