#pragma once
// Evaluation of a model on a labelled set: fused accuracy with its binomial
// standard error sqrt(a (1 - a) / n), per-patch accuracy, per-class accuracy
// and the confusion matrix (rows: true class, columns: predicted).

#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "patchwise/data/dataset.h"
#include "patchwise/data/loader.h"
#include "patchwise/model/patch_classifier.h"

namespace patchwise {

/// The fused accuracy of one fusion rule applied to the same model.
struct RuleAccuracy {
  std::string rule;
  double accuracy = 0;
  double accuracy_stderr = 0;
};

/// One cell of a confusion matrix that is not zero.
struct ConfusionCell {
  int64_t truth = 0;
  int64_t predicted = 0;
  int64_t count = 0;
};

/// Up to this many classes the confusion matrix is also kept, printed and written whole.
constexpr int64_t kDenseConfusionClasses = 100;

struct Evaluation {
  int64_t n = 0;
  std::string fusion;                           ///< the rule the fused numbers use
  double loss = 0;                              ///< mean fused NLL
  double accuracy = 0;                          ///< fused
  double accuracy_stderr = 0;                   ///< sqrt(a (1 - a) / n)
  double patch_accuracy = 0;                    ///< mean over patches of argmax == label
  std::vector<double> position_accuracy;        ///< [P] accuracy of each patch position alone
  std::vector<double> per_class_accuracy;       ///< [K] recall of each class (NaN: no sample)
  std::vector<ConfusionCell> confusion_cells;   ///< the non-zero cells, by truth then prediction
  std::vector<std::vector<int64_t>> confusion;  ///< [K][K] when K <= kDenseConfusionClasses
  std::vector<std::string> class_names;         ///< [K]
  std::vector<RuleAccuracy> rules;              ///< every fixed rule (and the model's learned
                                                ///< one), when asked for; else empty
  double seconds = 0;                           ///< wall time
  double images_per_second = 0;

  /// A human-readable report: accuracies, per-class table, confusion matrix.
  void print(std::ostream& os) const;
  /// Beyond kDenseConfusionClasses: the most frequent confusions instead of the matrix.
  void print_confusions(std::ostream& os) const;
  /// {"n", "accuracy", "accuracy_stderr", "patch_accuracy", "position_accuracy",
  ///  "per_class_accuracy", "confusion" (null beyond kDenseConfusionClasses),
  ///  "confusion_cells" ([truth, predicted, count] each), "classes", "loss", "fusion", ...}
  nlohmann::json to_json() const;
};

/// Runs `model` (in evaluation mode, without gradients) over `data`; restores its
/// training mode afterwards. With `all_rules`, also scores every fixed fusion rule
/// (and the model's own learned rule) on the same patch outputs. Throws InputError
/// when the data does not fit the model. With `bags` (a tiled model), each image is its
/// bag of tiles; the patch accuracy is then over every tile, and position_accuracy holds
/// it alone.
/// `observe`, when given, sees every batch with the model's output for it, in the set's
/// order (a report's per-image pictures come from the same pass).
using BatchObserver = std::function<void(const Batch&, const PatchOutput&)>;
Evaluation evaluate(
    PatchClassifier& model, const Dataset& data, int64_t batch = 256, bool all_rules = false,
    const BagFn& bags = {}, const BatchObserver& observe = {});

/// sqrt(a (1 - a) / n), 0 when n == 0.
double binomial_stderr(double accuracy, int64_t n);

}  // namespace patchwise
