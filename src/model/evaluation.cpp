#include "patchwise/model/evaluation.h"

#include <fmt/ostream.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "patchwise/data/loader.h"

namespace patchwise {

double binomial_stderr(double accuracy, int64_t n) {
  return n > 0 ? std::sqrt(accuracy * (1.0 - accuracy) / static_cast<double>(n)) : 0.0;
}

namespace {

/// The rules `all_rules` scores: every fixed one, and the model's own when learned.
std::vector<FusionRule> scored_rules(FusionRule own, bool all_rules) {
  if (!all_rules) return {};
  std::vector<FusionRule> rules = fixed_fusion_rules();
  if (fusion_rule_is_learned(own)) rules.push_back(own);
  return rules;
}

/// The confusion matrix, kept as the cells that are not zero: memory grows with the
/// images evaluated, not with the square of the classes.
class ConfusionCounts {
 public:
  void add(const at::Tensor& labels, const at::Tensor& predicted) {
    const at::Tensor t = labels.to(torch::kCPU, torch::kInt64).contiguous();
    const at::Tensor p = predicted.to(torch::kCPU, torch::kInt64).contiguous();
    for (int64_t i = 0; i < t.size(0); ++i) {
      ++cells_[{t.data_ptr<int64_t>()[i], p.data_ptr<int64_t>()[i]}];
    }
  }
  /// The cells, each class's recall, and the whole matrix when it is small.
  void set(Evaluation& e, int64_t classes) const {
    std::vector<int64_t> totals(static_cast<size_t>(classes), 0);
    std::vector<int64_t> hits(static_cast<size_t>(classes), 0);
    const bool dense = classes <= kDenseConfusionClasses;
    if (dense) e.confusion.assign(static_cast<size_t>(classes), std::vector<int64_t>(classes, 0));
    for (const auto& [cell, count] : cells_) {
      e.confusion_cells.push_back({cell.first, cell.second, count});
      totals[static_cast<size_t>(cell.first)] += count;
      if (cell.first == cell.second) hits[static_cast<size_t>(cell.first)] += count;
      if (dense)
        e.confusion[static_cast<size_t>(cell.first)][static_cast<size_t>(cell.second)] = count;
    }
    for (size_t k = 0; k < totals.size(); ++k) {
      e.per_class_accuracy.push_back(
          totals[k] > 0 ? double(hits[k]) / double(totals[k])
                        : std::numeric_limits<double>::quiet_NaN());
    }
  }
  int64_t diagonal() const {
    int64_t sum = 0;
    for (const auto& [cell, count] : cells_) sum += cell.first == cell.second ? count : 0;
    return sum;
  }

 private:
  std::map<std::pair<int64_t, int64_t>, int64_t> cells_;
};

}  // namespace

Evaluation evaluate(
    PatchClassifier& model, const Dataset& data, int64_t batch, bool all_rules, const BagFn& bags,
    const BatchObserver& observe) {
  check_dataset_fits(model->config(), data);
  const auto start = std::chrono::steady_clock::now();
  const bool was_training = model->is_training();
  model->eval();
  const int64_t classes = model->num_classes();
  const int64_t patches = model->num_patches();
  const c10::Device device = model->device();

  // Sums stay on the device; one read at the end.
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);
  at::Tensor loss_sum = torch::zeros({}, f64);
  at::Tensor position_correct = torch::zeros({patches}, f64);
  int64_t tiles = 0;  // with bags: every tile scored
  ConfusionCounts confusion;
  const std::vector<FusionRule> rules = scored_rules(model->config().fusion, all_rules);
  at::Tensor rule_correct = torch::zeros({static_cast<int64_t>(rules.size())}, f64);
  {
    torch::InferenceMode guard;
    Loader loader(data, batch, /*shuffle=*/false, /*seed=*/0, 0, 1, bags);
    loader.start_epoch(0);
    for (Batch b; loader.next(b);) {
      at::Tensor labels = b.labels.to(device);
      PatchOutput out = b.counts.empty() ? model->forward(b.images)
                                         : model->forward_bags(b.images.to(device), b.counts);
      loss_sum +=
          torch::nll_loss(out.log_probs, labels, {}, at::Reduction::Sum).to(torch::kFloat64);
      confusion.add(labels, out.log_probs.argmax(1));
      at::Tensor hits = out.patch_logits.argmax(2).eq(labels.unsqueeze(1));  // [B,P]
      if (out.mask.defined()) hits = hits.logical_and(out.mask.to(device));
      if (b.counts.empty()) {
        position_correct += hits.sum(0).to(torch::kFloat64);
      } else {  // bags: one position, every tile of every bag
        position_correct += hits.sum().to(torch::kFloat64);
        for (int64_t n : b.counts) tiles += n;
      }
      for (size_t r = 0; r < rules.size(); ++r) {
        at::Tensor fused = fusion_rule_is_learned(rules[r])
                               ? out.log_probs
                               : fuse(rules[r], out.patch_logits, out.mask);
        rule_correct[static_cast<int64_t>(r)] +=
            fused.argmax(1).eq(labels).sum().to(torch::kFloat64);
      }
      if (observe) observe(b, out);
    }
  }
  if (was_training) model->train();

  Evaluation e;
  e.n = data.size();
  e.fusion = fusion_rule_name(model->config().fusion);
  e.class_names = model->config().class_names;
  at::Tensor pos = position_correct.to(torch::kCPU) /
                   static_cast<double>(bags ? std::max<int64_t>(tiles, 1) : e.n);
  const double n = static_cast<double>(e.n);
  e.loss = loss_sum.item<double>() / n;
  e.accuracy = static_cast<double>(confusion.diagonal()) / n;
  e.accuracy_stderr = binomial_stderr(e.accuracy, e.n);
  e.position_accuracy.assign(pos.data_ptr<double>(), pos.data_ptr<double>() + patches);
  e.patch_accuracy = pos.mean().item<double>();
  at::Tensor rule_acc = rule_correct.to(torch::kCPU) / n;
  for (size_t r = 0; r < rules.size(); ++r) {
    const double a = rule_acc[static_cast<int64_t>(r)].item<double>();
    e.rules.push_back({fusion_rule_name(rules[r]), a, binomial_stderr(a, e.n)});
  }
  confusion.set(e, classes);
  e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  e.images_per_second = e.seconds > 0 ? n / e.seconds : 0;
  return e;
}

void Evaluation::print(std::ostream& os) const {
  fmt::print(os, "images           {}\n", n);
  fmt::print(
      os, "accuracy         {:.4f} ± {:.4f}  (fusion {})\n", accuracy, accuracy_stderr, fusion);
  fmt::print(
      os,
      "patch accuracy   {:.4f}  (mean over {} patch positions:",
      patch_accuracy,
      position_accuracy.size());
  for (double a : position_accuracy) fmt::print(os, " {:.4f}", a);
  fmt::print(os, ")\n");
  if (!rules.empty()) {
    fmt::print(os, "fusion rules     (the same patch outputs, fused by each rule)\n");
    for (const RuleAccuracy& r : rules) {
      fmt::print(os, "  {:<16} {:.4f} ± {:.4f}\n", r.rule, r.accuracy, r.accuracy_stderr);
    }
    fmt::print(os, "patch positions  (each patch alone)\n");
    for (size_t p = 0; p < position_accuracy.size(); ++p) {
      fmt::print(
          os,
          "  patch{:<11} {:.4f} ± {:.4f}\n",
          p + 1,
          position_accuracy[p],
          binomial_stderr(position_accuracy[p], n));
    }
  }
  fmt::print(os, "loss             {:.4f}\n", loss);
  fmt::print(os, "speed            {:.0f} images/s\n\n", images_per_second);
  size_t width = 5;
  for (const auto& name : class_names) width = std::max(width, name.size());
  fmt::print(os, "{:<{}}  accuracy\n", "class", width);
  const size_t row_width = width + 1 + std::to_string(class_names.size()).size();
  for (size_t k = 0; k < class_names.size(); ++k) {
    fmt::print(os, "{:<{}}  {:.4f}\n", class_names[k], width, per_class_accuracy[k]);
  }
  if (confusion.empty()) return print_confusions(os);
  fmt::print(
      os, "\nconfusion matrix (rows: true class, columns: predicted)\n{:>{}}", "", row_width);
  for (size_t k = 0; k < class_names.size(); ++k) fmt::print(os, " {:>5}", k);
  fmt::print(os, "\n");
  for (size_t t = 0; t < confusion.size(); ++t) {
    fmt::print(os, "{:<{}}", fmt::format("{} {}", t, class_names[t]), row_width);
    for (int64_t v : confusion[t]) fmt::print(os, " {:>5}", v);
    fmt::print(os, "\n");
  }
}

void Evaluation::print_confusions(std::ostream& os) const {
  std::vector<ConfusionCell> wrong;
  for (const ConfusionCell& c : confusion_cells) {
    if (c.truth != c.predicted) wrong.push_back(c);
  }
  std::stable_sort(
      wrong.begin(), wrong.end(), [](const auto& a, const auto& b) { return a.count > b.count; });
  const size_t shown = std::min<size_t>(wrong.size(), 20);
  fmt::print(
      os,
      "\nconfusions (true -> predicted; the {} most frequent of {}: {} classes are too many "
      "for the whole matrix, which --json gives as confusion_cells)\n",
      shown,
      wrong.size(),
      class_names.size());
  for (size_t i = 0; i < shown; ++i) {
    fmt::print(
        os,
        "  {:>6}  {} -> {}\n",
        wrong[i].count,
        class_names[static_cast<size_t>(wrong[i].truth)],
        class_names[static_cast<size_t>(wrong[i].predicted)]);
  }
}

nlohmann::json Evaluation::to_json() const {
  nlohmann::json per_class = nlohmann::json::array();
  for (double a : per_class_accuracy)
    per_class.push_back(std::isnan(a) ? nlohmann::json() : nlohmann::json(a));
  nlohmann::json cells = nlohmann::json::array();
  for (const ConfusionCell& c : confusion_cells) cells.push_back({c.truth, c.predicted, c.count});
  nlohmann::json rule_table = nlohmann::json::array();
  for (const RuleAccuracy& r : rules) {
    rule_table.push_back(
        {{"rule", r.rule}, {"accuracy", r.accuracy}, {"accuracy_stderr", r.accuracy_stderr}});
  }
  return {
      {"n", n},
      {"fusion_rules", rule_table},
      {"fusion", fusion},
      {"accuracy", accuracy},
      {"accuracy_stderr", accuracy_stderr},
      {"patch_accuracy", patch_accuracy},
      {"position_accuracy", position_accuracy},
      {"per_class_accuracy", per_class},
      {"confusion", confusion.empty() ? nlohmann::json() : nlohmann::json(confusion)},
      {"confusion_cells", cells},
      {"classes", class_names},
      {"loss", loss},
      {"seconds", seconds},
      {"images_per_second", images_per_second}};
}

}  // namespace patchwise
