#pragma once
// The trainer: Adam, AdamW or SGD over shuffled mini-batches with a learning-rate
// schedule, optional gradient clipping and a moving average of the weights, one
// evaluation per epoch. It never prints: progress and per-epoch metrics go to the
// caller's callbacks.

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "patchwise/data/augment.h"
#include "patchwise/data/dataset.h"
#include "patchwise/data/loader.h"
#include "patchwise/model/patch_classifier.h"
#include "patchwise/train/loss.h"
#include "patchwise/train/optimizer.h"
#include "patchwise/train/schedule.h"

namespace patchwise {

class Distributed;
struct ModelFile;  // model/model_file.h

struct TrainerOptions {
  int64_t epochs = 10;         ///< passes over the training set
  int64_t batch = 64;          ///< images per step (each gives P patches)
  OptimizerOptions optimizer;  ///< Adam at 1e-3 unless set
  ScheduleOptions schedule;    ///< the rate over the run; constant unless set
  double label_smoothing = 0;  ///< loss.h; 0: none
  double clip_grad_norm = 0;   ///< > 0: scale the gradient down to this global L2
                               ///< norm when above it; 0: never
  double ema = 0;              ///< > 0: the decay of a moving average of the weights
                               ///< (train/ema.h), which is what each epoch evaluates
                               ///< and what the model ends with; 0: none
  uint64_t seed = 42;          ///< weights, data order and dropout
  LossKind loss = LossKind::kPatch;
  int64_t eval_batch = 256;      ///< images per evaluation step
  AugmentOptions augment;        ///< off by default
  bool keep_best = false;        ///< end with the weights of the epoch with the best
                                 ///< accuracy on the evaluation set (needs one)
  std::string checkpoint;        ///< checkpoint file; empty: none
  int64_t checkpoint_every = 0;  ///< steps between checkpoints; 0: after every epoch
  std::string checkpoint_note;   ///< JSON text stored in the checkpoint's "training"
                                 ///< section next to the trainer's state (the caller's flags)
  std::string resume;            ///< a checkpoint to continue from; empty: a fresh start
  std::shared_ptr<const ModelFile> resume_file;  ///< `resume` already read; null: read it
  const std::atomic<int>* stop = nullptr;        ///< nonzero (a signal number): finish the current
                                           ///< step, write the checkpoint, throw TrainingStopped
  BagFn bags;                          ///< tiled models: each training image's bag of tiles
  BagFn eval_bags;                     ///< and each evaluation image's
  int64_t select = 0;                  ///< > 0: train on the `select` best tiles of each bag
                                       ///< (train/select.h); 0: on every tile
  Distributed* distributed = nullptr;  ///< data-parallel: this process's group (batch is the
                                       ///< global batch, a multiple of the world size); null:
                                       ///< one process
};

/// Thrown when options.stop was raised; the checkpoint (if any) holds the run so far.
class TrainingStopped : public std::runtime_error {
 public:
  TrainingStopped(int signal, int64_t epoch, int64_t step, const std::string& message)
      : std::runtime_error(message), signal(signal), epoch(epoch), step(step) {}
  int signal;
  int64_t epoch;
  int64_t step;
};

struct EpochMetrics {
  int64_t epoch = 0;    ///< 1-based
  double loss = 0;      ///< mean training loss over the epoch
  double accuracy = 0;  ///< fused accuracy on the training batches, as trained
  double test_loss = std::numeric_limits<double>::quiet_NaN();      ///< fused NLL on the eval set
  double test_accuracy = std::numeric_limits<double>::quiet_NaN();  ///< fused accuracy on it
  double seconds = 0;  ///< wall time of the training pass
  double images_per_second = 0;
};

/// {"epoch", "loss", "accuracy", "test_loss", "test_accuracy" (null when none), "seconds",
///  "images_per_second"}
nlohmann::json epoch_metrics_to_json(const EpochMetrics& m);

struct TrainerCallbacks {
  /// After each step: steps done and total in this epoch, running mean loss.
  std::function<void(int64_t epoch, int64_t step, int64_t steps, double loss)> on_step;
  /// After each epoch, with its metrics.
  std::function<void(const EpochMetrics&)> on_epoch;
};

struct TrainResult {
  std::vector<EpochMetrics> history;
  int64_t kept_epoch = 0;  ///< the epoch whose weights the model ends with
  // Data-parallel runs only:
  int64_t gradient_floats = 0;   ///< values averaged across the ranks per step
  int64_t gradient_buckets = 0;  ///< the Reducer's buckets (one allreduce each)
  double allreduce_ms = 0;       ///< median time of one blocking allreduce of all of them
  double backward_ms = 0;        ///< mean wall time of backward() per step, allreduce included
};

/// The rules among the options alone, checked before any data is read: OptionError
/// naming the option for a value out of range, a loss that cannot train `fusion`, keep
/// best without an evaluation set, or a batch that `world_size` processes cannot share.
void check_trainer_options(
    const TrainerOptions& options, FusionRule fusion, bool has_eval_set, int64_t world_size);

/// Trains `model` on `train`, scoring `eval_set` (a validation or test set; may be
/// null) after every epoch. A checkpoint is a model file whose "training" section
/// holds the trainer's state and whose archive holds the optimizer and RNG state;
/// resuming from it continues bit for bit where it stopped (same data, threads and
/// seed): the data order is a function of (seed, epoch) and every random draw comes
/// from the restored generator. Throws InputError when the data does not fit the model
/// (image size, channels, labels >= K) or keep_best lacks an evaluation set, and
/// std::runtime_error when the loss becomes NaN or infinite.
///
/// With options.distributed every rank calls this with the same data and options:
/// the weights and buffers start as rank 0's, each rank trains on its shard of each
/// global batch (Loader's rule), the Reducer averages the gradients (a last batch of L
/// images is weighted so that the average is the mean over all L), and the epoch's
/// metrics and the evaluation (each rank scores a strided shard) are summed over the
/// ranks, so every rank returns the same history. Only rank 0 writes checkpoints. A
/// stop signal on any rank stops all of them after the same step. A peer failure
/// throws DistributedError.
TrainResult train_model(
    PatchClassifier& model, const Dataset& train, const Dataset* eval_set,
    const TrainerOptions& options, const TrainerCallbacks& callbacks = {});

}  // namespace patchwise
