#include "patchwise/report/evaluation.h"

#include <chrono>
#include <cmath>

#include <fmt/ostream.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "patchwise/data/loader.h"

namespace patchwise {

double binomial_stderr(double accuracy, int64_t n) {
  return n > 0 ? std::sqrt(accuracy * (1.0 - accuracy) / static_cast<double>(n)) : 0.0;
}

Evaluation evaluate(PatchClassifier& model, const Dataset& data, int64_t batch) {
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
  at::Tensor confusion = torch::zeros({classes * classes}, f64);
  {
    torch::InferenceMode guard;
    Loader loader(data, batch, /*shuffle=*/false, /*seed=*/0);
    loader.start_epoch(0);
    for (Batch b; loader.next(b);) {
      at::Tensor labels = b.labels.to(device);
      PatchOutput out = model->forward(b.images);
      loss_sum += torch::nll_loss(out.log_probs, labels, {}, at::Reduction::Sum).to(torch::kFloat64);
      at::Tensor predicted = out.log_probs.argmax(1);
      confusion.index_add_(0, labels * classes + predicted,
                           torch::ones({labels.size(0)}, f64));
      position_correct += out.patch_logits.argmax(2).eq(labels.unsqueeze(1)).sum(0).to(torch::kFloat64);
    }
  }
  if (was_training) model->train();

  Evaluation e;
  e.n = data.size();
  e.fusion = fusion_rule_name(model->config().fusion);
  e.class_names = model->config().class_names;
  at::Tensor cm = confusion.to(torch::kCPU).view({classes, classes}).to(torch::kInt64);
  at::Tensor pos = position_correct.to(torch::kCPU) / static_cast<double>(e.n);
  const double n = static_cast<double>(e.n);
  e.loss = loss_sum.item<double>() / n;
  e.accuracy = cm.diagonal().sum().item<double>() / n;
  e.accuracy_stderr = binomial_stderr(e.accuracy, e.n);
  e.position_accuracy.assign(pos.data_ptr<double>(), pos.data_ptr<double>() + patches);
  e.patch_accuracy = pos.mean().item<double>();
  for (int64_t t = 0; t < classes; ++t) {
    std::vector<int64_t> row(cm[t].data_ptr<int64_t>(), cm[t].data_ptr<int64_t>() + classes);
    int64_t total = 0;
    for (int64_t v : row) total += v;
    e.per_class_accuracy.push_back(total > 0 ? double(row[t]) / double(total)
                                             : std::numeric_limits<double>::quiet_NaN());
    e.confusion.push_back(std::move(row));
  }
  e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  e.images_per_second = e.seconds > 0 ? n / e.seconds : 0;
  return e;
}

void Evaluation::print(std::ostream& os) const {
  fmt::print(os, "images           {}\n", n);
  fmt::print(os, "accuracy ({:<5})  {:.4f} ± {:.4f}\n", fusion, accuracy, accuracy_stderr);
  fmt::print(os, "patch accuracy   {:.4f}  (mean over {} patch positions:", patch_accuracy,
             position_accuracy.size());
  for (double a : position_accuracy) fmt::print(os, " {:.4f}", a);
  fmt::print(os, ")\n");
  fmt::print(os, "loss             {:.4f}\n", loss);
  fmt::print(os, "speed            {:.0f} images/s\n\n", images_per_second);
  size_t width = 5;
  for (const auto& name : class_names) width = std::max(width, name.size());
  fmt::print(os, "{:<{}}  accuracy\n", "class", width);
  const size_t row_width = width + 1 + std::to_string(class_names.size()).size();
  for (size_t k = 0; k < class_names.size(); ++k) {
    fmt::print(os, "{:<{}}  {:.4f}\n", class_names[k], width, per_class_accuracy[k]);
  }
  fmt::print(os, "\nconfusion matrix (rows: true class, columns: predicted)\n{:>{}}", "", row_width);
  for (size_t k = 0; k < class_names.size(); ++k) fmt::print(os, " {:>5}", k);
  fmt::print(os, "\n");
  for (size_t t = 0; t < confusion.size(); ++t) {
    fmt::print(os, "{:<{}}", fmt::format("{} {}", t, class_names[t]), row_width);
    for (int64_t v : confusion[t]) fmt::print(os, " {:>5}", v);
    fmt::print(os, "\n");
  }
}

nlohmann::json Evaluation::to_json() const {
  nlohmann::json per_class = nlohmann::json::array();
  for (double a : per_class_accuracy) per_class.push_back(std::isnan(a) ? nlohmann::json() : nlohmann::json(a));
  return {{"n", n},
          {"fusion", fusion},
          {"accuracy", accuracy},
          {"accuracy_stderr", accuracy_stderr},
          {"patch_accuracy", patch_accuracy},
          {"position_accuracy", position_accuracy},
          {"per_class_accuracy", per_class},
          {"confusion", confusion},
          {"classes", class_names},
          {"loss", loss},
          {"seconds", seconds},
          {"images_per_second", images_per_second}};
}

}  // namespace patchwise
