#include "patchwise/train/trainer.h"

#include <gmock/gmock.h>

#include <cmath>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "patchwise/base/error.h"
#include "patchwise/model/evaluation.h"
#include "patchwise/model/model_file.h"
#include "patchwise/models/backbone.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;

/// 28x28 images of noise with a bright 8x8 square in quadrant `label` (4 classes).
Dataset quadrant_dataset(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  Dataset d;
  d.labels = torch::randint(0, 4, {n}, torch::kInt64);
  d.images = torch::randint(0, 60, {n, 1, 28, 28}, torch::kUInt8);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t q = d.labels[i].item<int64_t>();
    d.images[i][0].narrow(0, 3 + 14 * (q / 2), 8).narrow(1, 3 + 14 * (q % 2), 8).fill_(255);
  }
  d.class_names = {"tl", "tr", "bl", "br"};
  d.source = "quadrants";
  return d;
}

ModelConfig quadrant_config(const Dataset& d) {
  ModelConfig c;
  c.class_names = d.class_names;
  c.backbone.num_classes = 4;
  c.normalization = compute_normalization(d.images);
  return c;
}

class TrainerTest : public test::SeededTest {};

TEST_F(TrainerTest, PatchLossIsTheMeanCrossEntropyOfEveryPatchAgainstTheImageLabel) {
  PatchOutput out;
  out.patch_logits = torch::randn({3, 4, 5}, torch::kFloat64);
  out.log_probs = fuse(FusionRule::kMean, out.patch_logits);
  at::Tensor labels = torch::tensor({1, 4, 0}, torch::kInt64);
  double manual = 0;
  for (int b = 0; b < 3; ++b) {
    for (int p = 0; p < 4; ++p) {
      manual -= torch::log_softmax(out.patch_logits[b][p], 0)[labels[b]].item<double>();
    }
  }
  manual /= 12;
  // Float64: means of 12 (and 3) log-probabilities of order 1 in other orders, within
  // ~15 u (u = 2^-53) of their magnitudes, ~1e-14; 1e-12 leaves a factor 100.
  EXPECT_NEAR(compute_loss(LossKind::kPatch, out, labels).item<double>(), manual, 1e-12);
  double fused = 0;
  for (int b = 0; b < 3; ++b) fused -= out.log_probs[b][labels[b]].item<double>();
  fused /= 3;
  EXPECT_NEAR(compute_loss(LossKind::kFused, out, labels).item<double>(), fused, 1e-12);
  EXPECT_NEAR(compute_loss(LossKind::kBoth, out, labels).item<double>(), manual + fused, 1e-12);
}

TEST_F(TrainerTest, BatchNormInTrainingSeesTheWholeBatchForEveryBackboneThatHasIt) {
  // The CPU forward pass goes in chunks of patches unless batch statistics need the whole
  // batch: --batch-norm for small-cnn and vgg16, always for the resnets. 48 images of 4
  // patches are more than one chunk; in one piece the logits equal the backbone's on all
  // patches at once.
  for (const char* name : {"small-cnn", "resnet20"}) {
    ModelConfig c;
    c.class_names = {"a", "b"};
    c.backbone.num_classes = 2;
    c.backbone.name = name;
    c.backbone.batch_norm = std::string(name) == "small-cnn";
    c.backbone.dropout = 0;  // the two passes must draw nothing at random
    c.normalization = {{0.5}, {0.25}};
    PatchClassifier model(c);
    model->train();
    at::Tensor images = torch::randint(0, 256, {48, 1, 28, 28}, torch::kUInt8);
    at::Tensor fused = model->forward(images).patch_logits.flatten(0, 1);
    at::Tensor whole =
        model->backbone().forward(model->grid().cut(model->normalize(images)).flatten(0, 1));
    // In one piece both are the same pass (same code, same patches): equal bit for bit, and
    // 1e-5 need only be above 0. Chunks would normalize with other batch statistics and
    // move the logits by those statistics' sampling error, orders of magnitude above 1e-5.
    EXPECT_TRUE(torch::allclose(fused, whole, 1e-5, 1e-5)) << name;
  }
}

TEST_F(TrainerTest, RefusesALossThroughVote) {
  EXPECT_THAT(
      [] { check_trainable(LossKind::kFused, FusionRule::kVote); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("loss: fused with fusion vote")));
  EXPECT_NO_THROW(check_trainable(LossKind::kPatch, FusionRule::kVote));
  EXPECT_THAT(
      [] { check_trainable(LossKind::kPatch, FusionRule::kAttention); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("would never be trained")));
  EXPECT_NO_THROW(check_trainable(LossKind::kBoth, FusionRule::kGatedAttention));
  EXPECT_THAT(
      [] { check_trainable(LossKind::kPatch, FusionRule::kConcat); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("loss: patch with fusion concat")));
}

TEST_F(TrainerTest, LearnsWhichQuadrantHoldsTheSquare) {
  Dataset train = quadrant_dataset(512, 1);
  Dataset test = quadrant_dataset(200, 2);
  PatchClassifier model(quadrant_config(train));
  TrainerOptions options;
  options.epochs = 3;
  options.batch = 32;
  options.seed = 16;
  int64_t epochs_seen = 0;
  TrainerCallbacks callbacks;
  callbacks.on_epoch = [&](const EpochMetrics& m) { epochs_seen = m.epoch; };
  auto history = train_model(model, train, &test, options, callbacks).history;
  ASSERT_EQ(history.size(), 3u);
  EXPECT_EQ(epochs_seen, 3);
  EXPECT_LT(history.back().loss, history.front().loss);
  // Not a rounding bound: chance is 0.25, and a square of 255 on noise below 60 is plain
  // to see; above 0.95 allows nine errors in 200.
  EXPECT_GT(history.back().test_accuracy, 0.95);
  EXPECT_FALSE(model->is_training());
  // The trainer's last evaluation is this evaluate() (batch 256) on the same weights and
  // images in this process: the same operations, the same count.
  Evaluation e = evaluate(model, test);
  EXPECT_DOUBLE_EQ(e.accuracy, history.back().test_accuracy);
}

TEST_F(TrainerTest, AttentionFusionTrainsOnTheFusedLoss) {
  Dataset train = quadrant_dataset(512, 1);
  Dataset test = quadrant_dataset(200, 2);
  ModelConfig config = quadrant_config(train);
  config.fusion = FusionRule::kGatedAttention;
  PatchClassifier model(config);
  TrainerOptions options;
  options.epochs = 3;
  options.batch = 32;
  options.loss = LossKind::kFused;
  auto history = train_model(model, train, &test, options).history;
  EXPECT_GT(history.back().test_accuracy, 0.95);  // as above: chance is 0.25
  // The square lies in one quadrant, which only the patch over it sees whole:
  // attention should weigh that patch most.
  torch::NoGradGuard no_grad;
  PatchOutput out = model->forward(test.images.narrow(0, 0, 64));
  at::Tensor labels = test.labels.narrow(0, 0, 64);
  const double agree = out.attention.argmax(1).eq(labels).to(torch::kFloat64).mean().item<double>();
  EXPECT_GT(agree, 0.5);  // chance: 0.25 (one patch of 4); a count out of 64
}

// Quadrants cut as 2x2 patches of 14 that do not overlap: every patch sees the square
// at the same place within it, so only a rule that knows the patches' grid positions
// can tell the classes apart.
TEST_F(TrainerTest, ConcatFusionTellsApartWhatPositionBlindRulesCannot) {
  Dataset train = quadrant_dataset(512, 1);
  Dataset test = quadrant_dataset(200, 2);
  TrainerOptions options;
  options.epochs = 3;
  options.batch = 32;
  options.loss = LossKind::kFused;
  std::map<FusionRule, double> accuracy;
  for (FusionRule rule : {FusionRule::kConcat, FusionRule::kGMean}) {
    ModelConfig config = quadrant_config(train);
    config.grid.patch_h = config.grid.patch_w = config.grid.stride_h = config.grid.stride_w = 14;
    config.fusion = rule;
    PatchClassifier model(config);
    accuracy[rule] = train_model(model, train, &test, options).history.back().test_accuracy;
  }
  // Not rounding bounds: accuracies out of 200, one rule near perfect, the other near the
  // chance of 0.25 it cannot beat; both margins are many images wide.
  EXPECT_GT(accuracy[FusionRule::kConcat], 0.95);
  EXPECT_LT(accuracy[FusionRule::kGMean], 0.5);  // chance is 0.25
}

TEST_F(TrainerTest, KeepBestEndsWithTheWeightsOfTheBestValidationEpoch) {
  Dataset train = quadrant_dataset(256, 11);
  Dataset validation = quadrant_dataset(64, 12);
  PatchClassifier model(quadrant_config(train));
  TrainerOptions options;
  options.epochs = 4;
  options.batch = 32;
  options.optimizer.lr = 3e-3;
  options.keep_best = true;
  TrainResult result = train_model(model, train, &validation, options);
  int64_t best = 1;
  for (const EpochMetrics& m : result.history) {
    if (m.test_accuracy > result.history[best - 1].test_accuracy) best = m.epoch;
  }
  EXPECT_EQ(result.kept_epoch, best);
  // The kept weights are those the trainer evaluated with this evaluate() (batch 256) on
  // the same images in this process: the same operations, the same count.
  EXPECT_DOUBLE_EQ(evaluate(model, validation).accuracy, result.history[best - 1].test_accuracy);
  options.keep_best = true;
  EXPECT_THROW(train_model(model, train, nullptr, options), InputError);
}

/// The first weight tensor after training a fresh model seeded with 4.
at::Tensor weights_after(const Dataset& train, const TrainerOptions& options) {
  torch::manual_seed(4);
  PatchClassifier model(quadrant_config(train));
  train_model(model, train, nullptr, options);
  return model->parameters()[0].clone();
}

TEST_F(TrainerTest, TheSameSeedGivesTheSameWeightsWithOrWithoutAugmentation) {
  Dataset train = quadrant_dataset(96, 3);
  TrainerOptions options;
  options.epochs = 1;
  options.batch = 32;
  const at::Tensor plain = weights_after(train, options);
  // Equal bit for bit: the same operations on the same data in one process. Augmented
  // inputs change the gradients, and so the weights, far beyond rounding.
  EXPECT_TRUE(torch::equal(plain, weights_after(train, options)));
  options.augment.shift = 2;
  options.augment.flip = true;
  const at::Tensor augmented = weights_after(train, options);
  EXPECT_TRUE(torch::equal(augmented, weights_after(train, options)));
  EXPECT_FALSE(torch::equal(augmented, plain));
}

/// Trains 3 epochs straight, and again stopped after the first step of epoch 2 and
/// resumed from its checkpoint: both must end bit for bit alike (the optimizer's state,
/// the data order and every random draw come back from the checkpoint, with every float's
/// bits), as both make the same operations in the same order in this process.
void expect_stop_and_resume_bit_identical(
    const std::string& dir, const OptimizerOptions& optimizer,
    const std::function<void(TrainerOptions&)>& recipe = {}, const char* backbone = nullptr) {
  Dataset train = quadrant_dataset(256, 21);
  Dataset test = quadrant_dataset(64, 22);
  ModelConfig config = quadrant_config(train);
  if (backbone) {
    config.backbone.name = backbone;
    config.grid.input = 8;  // 18x18 patches at 8x8, the smallest input: a quicker step
  }
  TrainerOptions options;
  options.optimizer = optimizer;
  if (recipe) recipe(options);
  options.epochs = 3;
  options.batch = 32;
  options.augment.shift = 2;  // random draws on top of dropout's
  options.augment.flip = true;
  torch::manual_seed(4);
  PatchClassifier straight(config);
  TrainResult reference = train_model(straight, train, &test, options);

  // Stop right after the first step of epoch 2, as SIGINT would.
  std::atomic<int> stop{0};
  options.checkpoint = dir + "/run.ckpt";
  options.checkpoint_every = 3;
  options.stop = &stop;
  TrainerCallbacks callbacks;
  callbacks.on_epoch = [&](const EpochMetrics& m) {
    if (m.epoch == 1) stop = 2;
  };
  torch::manual_seed(4);
  PatchClassifier first(config);
  try {
    train_model(first, train, &test, options, callbacks);
    FAIL() << "training did not stop";
  } catch (const TrainingStopped& stopped) {
    EXPECT_EQ(stopped.signal, 2);
    EXPECT_EQ(stopped.epoch, 2);
    EXPECT_EQ(stopped.step, 1);
  }

  options.stop = nullptr;
  options.resume = dir + "/run.ckpt";
  torch::manual_seed(99);  // whatever the new process's state, the checkpoint decides
  PatchClassifier resumed(config);
  TrainResult continued = train_model(resumed, train, &test, options);
  auto a = straight->parameters();
  auto b = resumed->parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i;
  auto c = straight->buffers();
  auto d = resumed->buffers();
  for (size_t i = 0; i < c.size(); ++i) EXPECT_TRUE(torch::equal(c[i], d[i])) << "buffer " << i;
  ASSERT_EQ(continued.history.size(), 3u);
  EXPECT_DOUBLE_EQ(continued.history[2].test_accuracy, reference.history[2].test_accuracy);
  EXPECT_DOUBLE_EQ(continued.history[1].loss, reference.history[1].loss);
}

TEST_F(TrainerTest, AStoppedAndResumedRunEndsWithBitIdenticalWeights) {
  expect_stop_and_resume_bit_identical(dir_.string(), {});  // Adam: its moments come back
}

TEST_F(TrainerTest, SgdMomentumBuffersComeBackOnResume) {
  expect_stop_and_resume_bit_identical(dir_.string(), {OptimizerKind::kSgd, 0.05, 0.9});
}

// Two parameter groups (weight decay), AdamW's state, the schedule's step count, label
// smoothing, clipping, erasing and the moving average all come back from the checkpoint.
TEST_F(TrainerTest, AFullRecipeResumesBitIdentical) {
  expect_stop_and_resume_bit_identical(
      dir_.string(), {OptimizerKind::kAdamW, 3e-3, 0, false, 0.05}, [](TrainerOptions& o) {
        o.schedule.kind = ScheduleKind::kCosine;
        o.schedule.warmup_epochs = 0.5;
        o.label_smoothing = 0.1;
        o.clip_grad_norm = 1.0;
        o.ema = 0.9;
        o.augment.erase = 0.5;
      });
}

TEST_F(TrainerTest, SgdNesterovWithDecayAndAStepScheduleResumesBitIdentical) {
  expect_stop_and_resume_bit_identical(
      dir_.string(), {OptimizerKind::kSgd, 0.05, 0.9, true, 5e-4}, [](TrainerOptions& o) {
        o.schedule.kind = ScheduleKind::kStep;
        o.schedule.step_epochs = 1;
        o.schedule.gamma = 0.5;
      });
}

// The residual backbones keep channels-last weights: the optimizer's buffers come back
// from the checkpoint in the default layout, which must change no value.
TEST_F(TrainerTest, AChannelsLastResNetResumesBitIdentical) {
  expect_stop_and_resume_bit_identical(
      dir_.string(),
      {OptimizerKind::kSgd, 0.05, 0.9, true, 5e-4},
      [](TrainerOptions& o) { o.ema = 0.9; },
      "resnet20");
}

TEST_F(TrainerTest, OptimizerOptionsAreChecked) {
  EXPECT_THAT(
      test::input_error([] {
        check_optimizer_options({OptimizerKind::kAdam, 1e-3, 0.9});
      }),
      ::testing::HasSubstr("momentum: 0.9, only used by the sgd optimizer, not adam"));
  EXPECT_THAT(
      test::input_error([] {
        check_optimizer_options({OptimizerKind::kSgd, -1, 0});
      }),
      ::testing::HasSubstr("lr: -1, expected a positive number"));
  EXPECT_THAT(
      test::input_error([] {
        check_optimizer_options({OptimizerKind::kSgd, 0.1, 1.0});
      }),
      ::testing::HasSubstr("momentum: 1, expected 0 <= m < 1"));
  EXPECT_THAT(
      test::input_error([] { parse_optimizer_kind("lamb"); }),
      ::testing::HasSubstr("unknown optimizer 'lamb', expected adam, adamw or sgd"));
  EXPECT_THAT(
      test::input_error([] {
        check_optimizer_options({OptimizerKind::kSgd, 0.1, 0, true});
      }),
      ::testing::HasSubstr("nesterov: with optimizer sgd and momentum 0, expected sgd with a "
                           "momentum above 0"));
  EXPECT_THAT(
      test::input_error([] {
        check_optimizer_options({OptimizerKind::kAdamW, 0.1, 0, false, -0.1});
      }),
      ::testing::HasSubstr("weight-decay: -0.1, expected 0 <= decay < 1"));
}

TEST_F(TrainerTest, ResumeRefusesAPlainModelFile) {
  Dataset train = quadrant_dataset(32, 23);
  PatchClassifier model(quadrant_config(train));
  save_model(path("plain.pw"), model, nullptr);
  TrainerOptions options;
  options.resume = path("plain.pw");
  EXPECT_THAT(
      [&] { train_model(model, train, nullptr, options); },
      ::testing::ThrowsMessage<InputError>(
          HasSubstr("a model file, expected a training checkpoint")));
}

TEST_F(TrainerTest, ANonFiniteLossStopsTrainingWithAClearError) {
  Dataset train = quadrant_dataset(64, 5);
  ModelConfig config = quadrant_config(train);
  config.normalization.std = {1e-45};  // a denormal deviation: the inputs overflow to inf
  PatchClassifier model(config);
  TrainerOptions options;
  options.epochs = 1;
  EXPECT_THAT(
      [&] { train_model(model, train, nullptr, options); },
      ::testing::ThrowsMessage<std::runtime_error>(HasSubstr("training loss became")));
}

TEST_F(TrainerTest, RefusesDataThatDoesNotFitTheModel) {
  Dataset train = quadrant_dataset(16, 6);
  PatchClassifier model(quadrant_config(train));
  train.labels[3] = 9;
  EXPECT_THAT(
      [&] { train_model(model, train, nullptr, TrainerOptions{}); },
      ::testing::ThrowsMessage<InputError>(HasSubstr("label 9 out of range")));
}

TEST_F(TrainerTest, EvaluationConfusionSumsToNAndStderrIsBinomial) {
  Dataset test = quadrant_dataset(50, 7);
  PatchClassifier model(quadrant_config(test));
  Evaluation e = evaluate(model, test, 16);
  int64_t total = 0;
  for (const auto& row : e.confusion)
    for (int64_t v : row) total += v;
  EXPECT_EQ(total, 50);
  // The same formula in the same order as binomial_stderr: equal to the last bit.
  EXPECT_NEAR(e.accuracy_stderr, std::sqrt(e.accuracy * (1 - e.accuracy) / 50), 1e-12);
  EXPECT_EQ(e.position_accuracy.size(), 4u);
}

// Beyond kDenseConfusionClasses only the non-zero cells are kept (memory linear in the
// images, not quadratic in the classes: 20,000 classes took 9.6 GB before); below it the
// matrix and the cells agree. Both against the model's own argmax.
TEST_F(TrainerTest, EvaluationKeepsTheConfusionCellsAndTheMatrixOnlyForFewClasses) {
  for (const int64_t classes : {int64_t{4}, int64_t{5000}}) {
    Dataset test = quadrant_dataset(40, 3);
    test.labels = torch::randint(0, classes, {40}, torch::kInt64);
    test.class_names.clear();
    for (int64_t k = 0; k < classes; ++k) test.class_names.push_back(std::to_string(k));
    ModelConfig config = quadrant_config(test);
    config.class_names = test.class_names;
    config.backbone.num_classes = classes;
    PatchClassifier model(config);
    model->eval();
    std::map<std::pair<int64_t, int64_t>, int64_t> expected;
    {
      torch::InferenceMode guard;
      const at::Tensor predicted = model->forward(test.images).log_probs.argmax(1);
      for (int64_t i = 0; i < 40; ++i) {
        ++expected[{test.labels[i].item<int64_t>(), predicted[i].item<int64_t>()}];
      }
    }
    const Evaluation e = evaluate(model, test, 16);
    std::map<std::pair<int64_t, int64_t>, int64_t> cells;
    for (const ConfusionCell& c : e.confusion_cells) cells[{c.truth, c.predicted}] = c.count;
    EXPECT_EQ(cells, expected) << classes << " classes";
    EXPECT_EQ(e.per_class_accuracy.size(), static_cast<size_t>(classes));
    std::ostringstream printed;
    e.print(printed);
    if (classes <= kDenseConfusionClasses) {
      ASSERT_EQ(e.confusion.size(), static_cast<size_t>(classes));
      for (const auto& [cell, count] : expected) {
        EXPECT_EQ(e.confusion[cell.first][cell.second], count);
      }
      EXPECT_THAT(printed.str(), HasSubstr("confusion matrix"));
    } else {
      EXPECT_TRUE(e.confusion.empty());
      EXPECT_TRUE(e.to_json()["confusion"].is_null());
      EXPECT_EQ(e.to_json()["confusion_cells"].size(), expected.size());
      EXPECT_THAT(printed.str(), HasSubstr("confusions (true -> predicted"));
    }
  }
}

TEST_F(TrainerTest, ClippingBoundsEachStepOfPlainSgd) {
  // 4 classes of random images; SGD at lr 1 clipped to norm 1e-3 moves the weights by
  // at most 1e-3 per step, 8 steps in all.
  Dataset train;
  train.labels = torch::randint(0, 4, {64}, torch::kInt64);
  train.images = torch::randint(0, 256, {64, 1, 28, 28}, torch::kUInt8);
  train.class_names = {"a", "b", "c", "d"};
  train.source = "noise";
  ModelConfig config;
  config.class_names = train.class_names;
  config.backbone.num_classes = 4;
  config.backbone.dropout = 0;
  config.normalization = compute_normalization(train.images);
  PatchClassifier model(config);
  std::vector<at::Tensor> before;
  for (const auto& p : model->parameters()) before.push_back(p.detach().clone());
  TrainerOptions options;
  options.epochs = 1;
  options.batch = 8;
  options.optimizer = {OptimizerKind::kSgd, 1.0};
  options.clip_grad_norm = 1e-3;
  train_model(model, train, nullptr, options);
  double squared = 0;
  const auto after = model->parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    squared += (after[i] - before[i]).to(torch::kDouble).pow(2).sum().item<double>();
  }
  EXPECT_GT(std::sqrt(squared), 0);
  // Float32 (u = 2^-24): a clipped step is 1e-3 up to a few u of its norm and scale, and
  // adding it rounds each weight by up to u |w|: u ||w|| = 4.6e-7 = 4.6e-4 of a step, with
  // ||w||^2 = 60 (Linear and Conv2d start uniform within 1/sqrt(fan_in): outputs / 3 per
  // layer, 16 + 32 + 64 + 64 + 4 outputs). The differences (one rounding, u of their size)
  // are squared and summed in double.
  EXPECT_LE(std::sqrt(squared), 8 * 1e-3 * (1 + 1e-3));
}

}  // namespace
}  // namespace patchwise
