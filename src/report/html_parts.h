#pragma once
// The pieces of the HTML reports (html_report.cpp, bag_report.cpp): escaping, inline
// images, charts, probability bars and the shared sections. Internal to src/report.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

namespace patchwise::html {

std::string escape(const std::string& text);
/// An <img> of `image` (uint8 [C,H,W]) inline as PNG, enlarged `scale` times.
std::string img_tag(const at::Tensor& image, const std::string& alt, int64_t scale = 1);
/// The top `top` of the k probabilities `p` as bars, the true class marked.
std::string probability_bars(
    const std::vector<std::string>& names, const float* p, int64_t k, int64_t top, int64_t truth);
/// The document's head, style and title.
std::string page_start(const std::string& title);
/// Loss and accuracy over the epochs of a model file's "training" section (a note when none).
std::string training_curves(const nlohmann::json& training);
/// The confusion matrix [true][predicted] with each class's accuracy.
std::string confusion_table(
    const std::vector<std::string>& names, const std::vector<std::vector<int64_t>>& confusion);

/// A card's first line: the image's number, its true class, the predicted one (marked
/// right or wrong) with its probability, then `extra`.
std::string card_title(
    int64_t i, const std::vector<std::string>& names, int64_t truth, int64_t predicted,
    float probability, const std::string& extra = "");

/// The `count` wrong images (predicted != labels) with the highest probability of their
/// predicted class, most confident first; probs float [N,K].
std::vector<int64_t> confident_mistakes(
    const at::Tensor& probs, const int64_t* predicted, const int64_t* labels, int64_t count);

}  // namespace patchwise::html
