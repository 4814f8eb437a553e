#include "train_flags.h"

#include <fmt/format.h>

#include <fstream>
#include <functional>
#include <optional>
#include <type_traits>
#include <vector>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/fusion/fusion.h"
#include "patchwise/model/model_file.h"
#include "patchwise/models/registry.h"
#include "patchwise/train/loss.h"
#include "patchwise/train/optimizer.h"
#include "patchwise/train/schedule.h"

namespace patchwise::cli {
namespace {

using nlohmann::json;

/// What becomes of a flag's value after the command line.
enum class Kept {
  kRestored,     ///< stored; --resume restores it; a recipe may set it
  kUnlessGiven,  ///< the same, but on --resume the command line's value wins
  kRecord,       ///< stored for the record only: never restored nor set by a recipe
  kNotStored,    ///< where output goes and how the run is driven: not stored
};

/// One row of the table.
struct TrainFlag {
  const char* key;   ///< key in checkpoints, model files and recipes
  const char* name;  ///< the flag ("--out,-o"); nullptr: set from other flags
  Kept kept;
  std::function<void(CLI::App*, TrainFlags&)> add;  ///< null: a common.h helper adds it
  std::function<json(const TrainFlags&)> get;
  std::function<void(const json&, TrainFlags&)> set;
  std::optional<CLI::Validator> check;  ///< also run on recipe values

  /// The long name alone ("--out"), as CLI::App::count takes it.
  std::string long_name() const {
    const std::string n = name;
    return n.substr(0, n.find(','));
  }
  bool given(const CLI::App* app) const { return name != nullptr && app->count(long_name()) > 0; }
};

/// A row for the member that `access` returns. With `help` the table adds the flag
/// (a switch for a bool); without, a common.h helper does (or none, when name is null).
template <typename Access>
TrainFlag field(
    const char* key, const char* name, const std::string& help, Kept kept, Access access,
    std::optional<CLI::Validator> check = std::nullopt) {
  using T = std::remove_reference_t<decltype(access(std::declval<TrainFlags&>()))>;
  TrainFlag flag{key, name, kept, nullptr, nullptr, nullptr, check};
  if (!help.empty()) {
    flag.add = [=](CLI::App* cmd, TrainFlags& f) {
      if constexpr (std::is_same_v<T, bool>) {
        cmd->add_flag(name, access(f), help);
      } else {
        CLI::Option* option = cmd->add_option(name, access(f), help);
        if (check) option->check(*check);
      }
    };
  }
  flag.get = [access](const TrainFlags& f) { return json(access(const_cast<TrainFlags&>(f))); };
  flag.set = [access](const json& j, TrainFlags& f) { access(f) = j.get<T>(); };
  return flag;
}

/// A row for a member the library keeps parsed (an enum, a bool): the flag, recipes and
/// checkpoints give its name, `parse` reads it (OptionError for an unknown name) and
/// `name` writes it back.
template <typename Access, typename Parse, typename Name>
TrainFlag named(
    const char* key, const char* name, const std::string& help, Kept kept, Access access,
    Parse parse, Name to_name, std::optional<CLI::Validator> check = std::nullopt) {
  TrainFlag flag{key, name, kept, nullptr, nullptr, nullptr, check};
  flag.add = [=](CLI::App* cmd, TrainFlags& f) {
    CLI::Option* option = cmd->add_option_function<std::string>(
        name, [=, &f](const std::string& value) { access(f) = parse(value); }, help);
    option->default_str(to_name(access(f)));
    if (check) option->check(*check);
  };
  flag.get = [=](const TrainFlags& f) { return json(to_name(access(const_cast<TrainFlags&>(f)))); };
  flag.set = [=](const json& j, TrainFlags& f) { access(f) = parse(j.get<std::string>()); };
  return flag;
}

#define PW_FIELD(member) \
  [](TrainFlags & f) -> auto& { return f.member; }

const CLI::Validator kPositive = CLI::PositiveNumber;
const CLI::Validator kNonNegative = CLI::NonNegativeNumber;

/// Where the images come from and how the run starts.
void source_rows(std::vector<TrainFlag>& t) {
  const Kept rec = Kept::kRecord;
  t.push_back(field(
      "data",
      "--data",
      "data set folder: IDX files, CIFAR-10/100 batches, or class folders (or --features)",
      rec,
      PW_FIELD(job.data)));
  t.push_back(field(
      "features",
      "--features",
      "train only the head (attention and classifier) on this feature cache, made by "
      "patchwise features; its backbone and tiles stay frozen (instead of --data)",
      rec,
      PW_FIELD(job.features)));
  t.push_back(field(
      "init",
      "--init",
      "start from these weights (a warm start): a patchwise model file of the model these "
      "flags build (its input normalization included), or a PyTorch state dict saved by "
      "torch.save (patchwise export's names, or torchvision's resnet/vgg16 names)",
      rec,
      PW_FIELD(job.init)));
  t.push_back(field(
      "init_new_head",
      "--init-new-head",
      "with --init: the classifier starts fresh, the file's classifier weights are skipped "
      "(another number of classes, say)",
      rec,
      PW_FIELD(job.init_new_head)));
  t.push_back(field(
      "recipe",
      "--recipe",
      "a JSON file of flag values (keys as in the model file's training flags: "
      "{\"optimizer\": \"sgd\", \"lr\": 0.1, ...}); flags on the command line win",
      Kept::kNotStored,
      PW_FIELD(recipe)));
  t.push_back(field("label", "--label", "", Kept::kRestored, PW_FIELD(data_flags.label)));
  t.push_back(
      field("image_size", "--image-size", "", Kept::kRestored, PW_FIELD(data_flags.image_size)));
  t.push_back(field("strict", "--strict", "", Kept::kRestored, PW_FIELD(data_flags.strict)));
  t.push_back(field(
      "val_split",
      "--val-split",
      "hold out this fraction of the training set (stratified) for validation",
      Kept::kRestored,
      PW_FIELD(job.val_split),
      CLI::Range(0.0, 0.9)));
  t.push_back(named(
      "keep",
      "--keep",
      "best (the epoch with the best validation accuracy) or last",
      Kept::kRestored,
      PW_FIELD(job.trainer.keep_best),
      [](const std::string& name) {
        check_option(name == "best" || name == "last", "keep", "'{}', expected best or last", name);
        return name == "best";
      },
      [](bool best) { return std::string(best ? "best" : "last"); }));
  t.push_back(field(
      "limit_train",
      "--limit-train",
      "use the first N training images; 0: all",
      Kept::kRestored,
      PW_FIELD(job.limit_train),
      kNonNegative));
  t.push_back(field(
      "limit_test",
      "--limit-test",
      "use the first N test images; 0: all",
      Kept::kRestored,
      PW_FIELD(job.limit_test),
      kNonNegative));
}

/// Augmentation.
void augment_rows(std::vector<TrainFlag>& t) {
  const Kept k = Kept::kRestored;
  t.push_back(field(
      "shift",
      "--shift",
      "augmentation: random crop with padding: shifts of up to N pixels, the border zero",
      k,
      PW_FIELD(job.trainer.augment.shift),
      kNonNegative));
  t.push_back(field(
      "flip",
      "--flip",
      "augmentation: random horizontal flips",
      k,
      PW_FIELD(job.trainer.augment.flip)));
  t.push_back(field(
      "erase",
      "--erase",
      "augmentation: random erasing with this probability (a rectangle of 2-33 % of the "
      "image filled with noise)",
      k,
      PW_FIELD(job.trainer.augment.erase),
      CLI::Range(0.0, 1.0)));
}

/// The model: backbone, patches, fusion and loss.
void model_rows(std::vector<TrainFlag>& t) {
  const Kept k = Kept::kRestored;
  t.push_back(field(
      "model", "--model", "backbone: " + backbone_names(), k, PW_FIELD(job.model.backbone.name)));
  t.push_back(field("grid", "--grid", "", k, PW_FIELD(grid.grid)));
  t.push_back(field("patch", "--patch", "", k, PW_FIELD(grid.patch)));
  t.push_back(field("stride", "--stride", "", k, PW_FIELD(grid.stride)));
  t.push_back(field("layout", "--layout", "", k, PW_FIELD(grid.layout)));
  t.push_back(field("input", "--input", "", k, PW_FIELD(grid.input)));
  t.push_back(named(
      "fusion",
      "--fusion",
      "fusion rule: " + fusion_rule_names(),
      k,
      PW_FIELD(job.model.fusion),
      parse_fusion_rule,
      fusion_rule_name));
  t.push_back(field(
      "attention_hidden",
      "--attention-hidden",
      "hidden width of the learned fusion rules",
      k,
      PW_FIELD(job.model.attention_hidden),
      kPositive));
  t.push_back(field(
      "position_embedding",
      "--position-embedding",
      "learned per-position embedding in the attention scores",
      k,
      PW_FIELD(job.model.position_embedding)));
  t.push_back(named(
      "loss",
      "--loss",
      "loss: patch, fused or both; default patch, fused on bags of tiles",
      k,
      PW_FIELD(job.trainer.loss),
      parse_loss_kind,
      loss_kind_name));
  t.push_back(field(
      "batch_norm",
      "--batch-norm",
      "batch normalization after each convolution (the resnets always have it)",
      k,
      PW_FIELD(job.model.backbone.batch_norm)));
  t.push_back(field(
      "dropout",
      "--dropout",
      "dropout before the last layer (small-cnn)",
      k,
      PW_FIELD(job.model.backbone.dropout),
      CLI::Range(0.0, 0.99)));
}

/// The recipe: optimizer, schedule and regularization.
void recipe_rows(std::vector<TrainFlag>& t) {
  const Kept k = Kept::kRestored;
  t.push_back(field(
      "epochs",
      "--epochs",
      "passes over the training set",
      Kept::kUnlessGiven,
      PW_FIELD(job.trainer.epochs),
      kPositive));
  t.push_back(
      field("batch", "--batch", "images per step", k, PW_FIELD(job.trainer.batch), kPositive));
  t.push_back(named(
      "optimizer",
      "--optimizer",
      "adam, adamw (decoupled weight decay) or sgd (plain, or with --momentum)",
      k,
      PW_FIELD(job.trainer.optimizer.kind),
      parse_optimizer_kind,
      optimizer_kind_name,
      CLI::IsMember({"adam", "adamw", "sgd"})));
  t.push_back(field(
      "lr",
      "--lr",
      "learning rate (the schedule's peak)",
      k,
      PW_FIELD(job.trainer.optimizer.lr),
      kPositive));
  t.push_back(field(
      "momentum",
      "--momentum",
      "sgd's momentum; 0: plain SGD",
      k,
      PW_FIELD(job.trainer.optimizer.momentum),
      CLI::Range(0.0, 0.999999)));
  t.push_back(field(
      "nesterov",
      "--nesterov",
      "sgd: Nesterov momentum",
      k,
      PW_FIELD(job.trainer.optimizer.nesterov)));
  t.push_back(field(
      "weight_decay",
      "--weight-decay",
      "weight decay of the weights (never of biases and norms); adamw: decoupled",
      k,
      PW_FIELD(job.trainer.optimizer.weight_decay),
      CLI::Range(0.0, 0.999999)));
  t.push_back(named(
      "schedule",
      "--schedule",
      "learning rate over the run: constant, step (x --lr-gamma every --lr-step epochs), "
      "cosine (to 0) or onecycle (up from lr/25, then down to lr/25e4)",
      k,
      PW_FIELD(job.trainer.schedule.kind),
      parse_schedule_kind,
      schedule_kind_name,
      CLI::IsMember({"constant", "step", "cosine", "onecycle"})));
  t.push_back(field(
      "warmup",
      "--warmup",
      "epochs of linear warmup (fractions allowed); -1: none (onecycle: 30 % of the run)",
      k,
      PW_FIELD(job.trainer.schedule.warmup_epochs),
      CLI::Range(-1.0, 1e6)));
  t.push_back(field(
      "lr_step",
      "--lr-step",
      "step schedule: epochs between decays",
      k,
      PW_FIELD(job.trainer.schedule.step_epochs),
      kPositive));
  t.push_back(field(
      "lr_gamma",
      "--lr-gamma",
      "step schedule: factor of each decay",
      k,
      PW_FIELD(job.trainer.schedule.gamma),
      CLI::Range(1e-9, 1.0)));
}

/// Regularization beyond the model's own.
void regularization_rows(std::vector<TrainFlag>& t) {
  const Kept k = Kept::kRestored;
  t.push_back(field(
      "label_smoothing",
      "--label-smoothing",
      "smooth each target: (1 - e) one-hot + e uniform",
      k,
      PW_FIELD(job.trainer.label_smoothing),
      CLI::Range(0.0, 0.999)));
  t.push_back(field(
      "clip_grad",
      "--clip-grad",
      "clip the gradient's global L2 norm to this; 0: never",
      k,
      PW_FIELD(job.trainer.clip_grad_norm),
      kNonNegative));
  t.push_back(field(
      "ema",
      "--ema",
      "keep a moving average of the weights with this decay (e.g. 0.999): each epoch is "
      "scored with it and the model ends with it; 0: none",
      k,
      PW_FIELD(job.trainer.ema),
      CLI::Range(0.0, 0.999999)));
  t.push_back(field(
      "seed", "--seed", "seed of weights, data order and dropout", k, PW_FIELD(job.trainer.seed)));
}

/// Large images as bags of tiles.
void tile_rows(std::vector<TrainFlag>& t) {
  const Kept k = Kept::kRestored;
  t.push_back(field("tiled", nullptr, "", k, PW_FIELD(job.model.tiled)));
  t.push_back(field("tile", "--tile", "", k, PW_FIELD(tiles.tiles.tile)));
  t.push_back(field("tile_stride", "--tile-stride", "", k, PW_FIELD(tiles.tiles.stride)));
  t.push_back(field("level", "--level", "", k, PW_FIELD(tiles.tiles.level)));
  t.push_back(field("mpp", "--mpp", "", k, PW_FIELD(tiles.tiles.mpp)));
  t.push_back(
      field("min_foreground", "--min-foreground", "", k, PW_FIELD(tiles.tiles.min_foreground)));
  t.push_back(field("mask_side", "--mask-side", "", k, PW_FIELD(tiles.tiles.mask_side)));
  t.push_back(field(
      "mask_cleanup", "--mask-cleanup,!--no-mask-cleanup", "", k, PW_FIELD(tiles.tiles.cleanup)));
  t.push_back(field(
      "select",
      "--select",
      "with --tile: train on the N best tiles of each bag, scored without gradients; 0: every "
      "tile",
      k,
      PW_FIELD(job.trainer.select),
      kNonNegative));
}

/// Where the run's files go, and how it is checkpointed and resumed.
void output_rows(std::vector<TrainFlag>& t) {
  const Kept no = Kept::kNotStored;
  t.push_back(field("out", "--out,-o", "model file to write", no, PW_FIELD(job.out)));
  t.push_back(field(
      "metrics",
      "--metrics",
      "write one JSON object per epoch to this file",
      no,
      PW_FIELD(job.metrics)));
  t.push_back(field(
      "json", "--json", "print a JSON summary on stdout (logs go to stderr)", no, PW_FIELD(json)));
  t.push_back(field(
      "checkpoint",
      "--checkpoint",
      "checkpoint file, written after every epoch, every --checkpoint-every steps and on "
      "SIGINT/SIGTERM; default: OUT.ckpt, removed when training ends",
      no,
      PW_FIELD(job.trainer.checkpoint)));
  t.push_back(field(
      "checkpoint_every",
      "--checkpoint-every",
      "also write the checkpoint every N steps; 0: only after epochs",
      no,
      PW_FIELD(job.trainer.checkpoint_every),
      kNonNegative));
  t.push_back(field(
      "resume",
      "--resume",
      "continue the run saved in this checkpoint (its flags and thread count; --data, --out, "
      "--epochs, --threads from this command line)",
      no,
      PW_FIELD(job.trainer.resume)));
  t.push_back(field(
      "dist_timeout",
      "--dist-timeout",
      "data-parallel runs (WORLD_SIZE > 1): seconds to wait for the other processes at the "
      "rendezvous and in every collective before giving up",
      no,
      PW_FIELD(dist_timeout)));
  t.push_back(field("threads", "--threads", "", Kept::kUnlessGiven, PW_FIELD(runtime.threads)));
  t.push_back(field(
      "precision",
      "--precision",
      "",
      Kept::kRestored,
      PW_FIELD(runtime.precision),
      precision_check()));
  t.push_back(field("kernels", "--kernels", "", Kept::kUnlessGiven, PW_FIELD(runtime.kernels)));
}

#undef PW_FIELD

/// The table, in the order of --help.
const std::vector<TrainFlag>& train_flag_table() {
  static const std::vector<TrainFlag> table = [] {
    std::vector<TrainFlag> t;
    source_rows(t);
    augment_rows(t);
    model_rows(t);
    recipe_rows(t);
    regularization_rows(t);
    tile_rows(t);
    output_rows(t);
    return t;
  }();
  return table;
}

/// Sets `flag` from `value`, read from `source`, checking it as the command line would.
void set_checked(
    const TrainFlag& flag, const json& value, TrainFlags& flags, const std::string& source) {
  try {
    flag.set(value, flags);
  } catch (const OptionError& e) {  // a name the library's parser does not know
    throw InputError(fmt::format("{}: '{}' is {}: {}", source, flag.key, value.dump(), e.detail()));
  } catch (const json::exception&) {
    throw InputError(fmt::format(
        "{}: '{}' is {}, expected the type of {}",
        source,
        flag.key,
        value.dump(),
        flag.name ? flag.long_name() : flag.key));
  }
  if (!flag.check) return;
  std::string text = value.is_string() ? value.get<std::string>() : value.dump();
  const std::string error = (*flag.check)(text);
  check_input(error.empty(), "{}: '{}' is {}: {}", source, flag.key, value.dump(), error);
}

}  // namespace

void add_train_flags(CLI::App* cmd, TrainFlags& flags) {
  for (const TrainFlag& flag : train_flag_table()) {
    if (flag.add) flag.add(cmd, flags);
  }
  add_data_flags(cmd, flags.data_flags);
  add_grid_flags(cmd, flags.grid);
  add_tile_flags(cmd, flags.tiles);
  add_runtime_flags(cmd, flags.runtime);
}

json flags_to_json(const TrainFlags& flags) {
  json j = json::object();
  for (const TrainFlag& flag : train_flag_table()) {
    if (flag.kept != Kept::kNotStored) j[flag.key] = flag.get(flags);
  }
  return j;
}

void flags_from_checkpoint(
    const json& saved, TrainFlags& flags, const CLI::App* app, const std::string& source) {
  for (const TrainFlag& flag : train_flag_table()) {
    const bool restored =
        flag.kept == Kept::kRestored || (flag.kept == Kept::kUnlessGiven && !flag.given(app));
    if (restored && saved.contains(flag.key)) set_checked(flag, saved[flag.key], flags, source);
  }
  // For the record: a resumed run's weights are its own.
  flags.job.init = saved.value("init", std::string());
}

void apply_recipe(TrainFlags& flags, const CLI::App* app) {
  if (flags.recipe.empty()) return;
  const std::string& path = flags.recipe;
  const std::string found = not_a_regular_file(path);
  check_input(
      found.empty(),
      "--recipe: cannot read {}, expected a JSON file, found {}",
      printable(path),
      found);
  std::ifstream in(path);
  check_input(in.good(), "--recipe: cannot read {}, expected a JSON file", path);
  json recipe = json::parse(in, nullptr, /*allow_exceptions=*/false);
  check_input(recipe.is_object(), "--recipe: {} is not a JSON object of flag values", path);
  for (const auto& [key, value] : recipe.items()) {
    const auto& table = train_flag_table();
    auto it = std::find_if(table.begin(), table.end(), [&](const TrainFlag& f) {
      return f.key == key && (f.kept == Kept::kRestored || f.kept == Kept::kUnlessGiven);
    });
    check_input(
        it != table.end() && it->name != nullptr,
        "{}: '{}' is not a flag a recipe sets, "
        "expected a key of the model file's training flags (lr, optimizer, schedule, ...)",
        path,
        key);
    if (!it->given(app)) set_checked(*it, value, flags, path);
  }
}

/// --resume: the checkpoint, read once, whose flags replace this command line's, except
/// the output, --epochs, --threads, and --data or --features when given.
void resume_flags(TrainFlags& f, const CLI::App* app) {
  const std::string path = f.job.trainer.resume;
  if (path.empty()) return;
  check_input(
      f.recipe.empty(),
      "--recipe: {} with --resume {}, expected one of them (a resumed run repeats its "
      "checkpoint's flags)",
      f.recipe,
      path);
  auto checkpoint = std::make_shared<const ModelFile>(load_model_file(path));
  const nlohmann::json& training = checkpoint->training;
  check_input(
      training.is_object() && training.contains("flags"),
      "--resume: {} is not a training checkpoint",
      path);
  const bool source_given = !f.job.data.empty() || !f.job.features.empty();
  const nlohmann::json& saved = training["flags"];
  flags_from_checkpoint(saved, f, app, path);
  if (!source_given && saved.is_object()) {
    f.job.data = saved.value("data", "");
    f.job.features = saved.value("features", "");
  }
  f.job.resume_file = std::move(checkpoint);
}

/// With --features the backbone, its input and its tiles come from the cache.
void check_feature_flags(const TrainFlags& f, const CLI::App* app) {
  if (f.job.features.empty()) return;
  for (const char* flag :
       {"--tile",
        "--select",
        "--shift",
        "--flip",
        "--model",
        "--batch-norm",
        "--grid",
        "--patch",
        "--stride",
        "--layout",
        "--input",
        "--position-embedding"}) {
    check_input(
        app->count(flag) == 0,
        "{}: the backbone and its tiles come from the feature cache {}, expected no {} "
        "with --features",
        flag,
        f.job.features,
        flag);
  }
}

}  // namespace patchwise::cli
