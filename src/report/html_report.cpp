#include "patchwise/report/html_report.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "html_parts.h"
#include "patchwise/data/image.h"
#include "patchwise/data/loader.h"
#include "patchwise/model/evaluation.h"
#include "patchwise/report/heatmap.h"
#include "patchwise/report/patch_sheet.h"

namespace patchwise {
namespace html {

constexpr int kChartWidth = 420;
constexpr int kChartHeight = 220;
constexpr int kChartMargin = 36;

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string img_tag(const at::Tensor& image, const std::string& alt, int64_t scale) {
  at::Tensor shown =
      scale > 1 ? resize_image(image, image.size(1) * scale, image.size(2) * scale) : image;
  return fmt::format(
      "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
      escape(alt),
      base64_encode(encode_png(shown)));
}

/// A line chart of several series over epochs, as inline SVG.
std::string svg_chart(
    const std::string& title,
    const std::vector<std::pair<std::string, std::vector<double>>>& series) {
  const char* colours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"};
  double lo = INFINITY, hi = -INFINITY;
  size_t epochs = 0;
  for (const auto& [name, values] : series) {
    for (double v : values) {
      if (std::isfinite(v)) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    epochs = std::max(epochs, values.size());
  }
  if (!std::isfinite(lo)) return "";
  if (hi - lo < 1e-9) hi = lo + 1.0;
  const double plot_w = kChartWidth - 2 * kChartMargin;
  const double plot_h = kChartHeight - 2 * kChartMargin;
  auto x_of = [&](size_t i) {
    return kChartMargin +
           (epochs > 1 ? plot_w * static_cast<double>(i) / double(epochs - 1) : plot_w / 2);
  };
  auto y_of = [&](double v) { return kChartMargin + plot_h * (hi - v) / (hi - lo); };
  std::string svg = fmt::format(
      "<svg class=\"chart\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" role=\"img\">"
      "<text x=\"{}\" y=\"20\" class=\"ct\">{}</text>"
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"frame\"/>"
      "<text x=\"4\" y=\"{}\" class=\"ax\">{:.3f}</text><text x=\"4\" y=\"{}\" "
      "class=\"ax\">{:.3f}</text>"
      "<text x=\"{}\" y=\"{}\" class=\"ax\">epoch 1</text><text x=\"{}\" y=\"{}\" "
      "class=\"ax\">{}</text>",
      kChartWidth,
      kChartHeight,
      kChartWidth,
      kChartHeight,
      kChartMargin,
      escape(title),
      kChartMargin,
      kChartMargin,
      plot_w,
      plot_h,
      kChartMargin + 4,
      hi,
      kChartMargin + plot_h,
      lo,
      kChartMargin,
      kChartHeight - 14,
      kChartMargin + plot_w - 20,
      kChartHeight - 14,
      epochs);
  for (size_t s = 0; s < series.size(); ++s) {
    std::string points;
    for (size_t i = 0; i < series[s].second.size(); ++i) {
      const double v = series[s].second[i];
      if (std::isfinite(v)) points += fmt::format("{:.1f},{:.1f} ", x_of(i), y_of(v));
    }
    const char* colour = colours[s % 4];
    svg += fmt::format(
        "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>"
        "<text x=\"{}\" y=\"{}\" fill=\"{}\" class=\"ax\">{}</text>",
        colour,
        points,
        kChartMargin + 8 + 110 * s,
        kChartHeight - 2,
        colour,
        escape(series[s].first));
  }
  return svg + "</svg>";
}

std::vector<double> history_values(const nlohmann::json& history, const char* key) {
  std::vector<double> out;
  for (const auto& epoch : history) {
    out.push_back(epoch.contains(key) && epoch[key].is_number() ? epoch[key].get<double>() : NAN);
  }
  return out;
}

/// A small HTML bar list of a probability vector's top entries.
std::string probability_bars(
    const std::vector<std::string>& names, const float* p, int64_t k, int64_t top, int64_t truth) {
  std::vector<int64_t> order(static_cast<size_t>(k));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(
      order.begin(), order.begin() + std::min(top, k), order.end(), [&](int64_t a, int64_t b) {
        return p[a] > p[b];
      });
  std::string html = "<div class=\"bars\">";
  for (int64_t i = 0; i < std::min(top, k); ++i) {
    const int64_t c = order[static_cast<size_t>(i)];
    html += fmt::format(
        "<div class=\"bar{}\"><span class=\"fill\" style=\"width:{:.0f}%\"></span>"
        "<span class=\"lbl\">{} {:.2f}</span></div>",
        c == truth ? " truth" : "",
        100.0 * p[c],
        escape(names[static_cast<size_t>(c)]),
        p[c]);
  }
  return html + "</div>";
}

const char* const kStyle = R"(
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-bottom:16px}.kpi{display:flex;gap:14px;flex-wrap:wrap}
.kpi div{background:#f4f6fa;border-radius:8px;padding:10px 14px}.kpi b{display:block;font-size:22px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f6fa}td.name,th.name{text-align:left}
.chart{background:#fafbfd;border:1px solid #e3e6ec;border-radius:6px;margin-right:12px}
.chart .ct{font-size:14px;font-weight:600}.chart .ax{font-size:11px;fill:#555}.chart .frame{fill:none;stroke:#ccc}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:14px}
.card{border:1px solid #e3e6ec;border-radius:8px;padding:10px}.card img{image-rendering:pixelated;max-width:100%}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
.bars{font-size:11px;margin:2px 0 6px}.bar{position:relative;background:#eef1f6;height:15px;margin:2px 0;border-radius:3px}
.bar .fill{position:absolute;left:0;top:0;bottom:0;background:#9ab8e6;border-radius:3px}
.bar.truth .fill{background:#7cc48a}.bar .lbl{position:relative;padding-left:4px}
.patches{display:grid;grid-template-columns:1fr 1fr;gap:4px}.note{color:#8a5a00;background:#fff6e0;padding:8px;border-radius:6px}
)";

std::string page_start(const std::string& title) {
  return "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
         "<title>" +
         escape(title) + "</title><style>" + kStyle + "</style></head><body><h1>" + escape(title) +
         "</h1>";
}

std::string training_curves(const nlohmann::json& training) {
  std::string out = "<h2>Training curves</h2>";
  const bool has_history = training.is_object() && training.contains("history") &&
                           training["history"].is_array() && !training["history"].empty();
  if (!has_history) {
    return out +
           "<p class=\"note\">This model file has no training history, so there are no "
           "curves.</p>";
  }
  const nlohmann::json& h = training["history"];
  return out +
         svg_chart(
             "loss",
             {{"train", history_values(h, "loss")}, {"test", history_values(h, "test_loss")}}) +
         svg_chart(
             "accuracy",
             {{"train", history_values(h, "accuracy")},
              {"test", history_values(h, "test_accuracy")}});
}

std::string confusion_table(
    const std::vector<std::string>& names, const std::vector<std::vector<int64_t>>& confusion) {
  const auto classes = static_cast<int64_t>(names.size());
  if (confusion.empty()) {
    return fmt::format(
        "<h2>Confusion matrix</h2><p>{} classes are too many for the matrix; "
        "<code>patchwise eval --json</code> gives its cells.</p>",
        classes);
  }
  std::string out = "<h2>Confusion matrix</h2><table><tr><th class=\"name\">true \\ predicted</th>";
  for (const auto& n : names) out += "<th>" + escape(n) + "</th>";
  out += "<th>accuracy</th></tr>";
  for (int64_t t = 0; t < classes; ++t) {
    int64_t row_total = 0;
    for (int64_t v : confusion[t]) row_total += v;
    out += "<tr><td class=\"name\">" + escape(names[t]) + "</td>";
    for (int64_t c = 0; c < classes; ++c) {
      const double share = row_total > 0 ? double(confusion[t][c]) / double(row_total) : 0.0;
      const char* hue = t == c ? "46,160,67" : "214,39,40";
      out += fmt::format(
          "<td style=\"background:rgba({},{:.2f})\">{}</td>",
          hue,
          std::min(1.0, share * 1.2),
          confusion[t][c]);
    }
    out += row_total > 0
               ? fmt::format("<td>{:.3f}</td></tr>", double(confusion[t][t]) / double(row_total))
               : std::string("<td>–</td></tr>");
  }
  return out + "</table>";
}

std::string card_title(
    int64_t i, const std::vector<std::string>& names, int64_t truth, int64_t predicted,
    float probability, const std::string& extra) {
  return fmt::format(
      "<div>#{} — true <b>{}</b>, predicted <span class=\"{}\">{}</span> ({:.2f}){}</div>",
      i,
      escape(names[truth]),
      predicted == truth ? "ok" : "bad",
      escape(names[predicted]),
      probability,
      extra);
}

std::vector<int64_t> confident_mistakes(
    const at::Tensor& probs, const int64_t* predicted, const int64_t* labels, int64_t count) {
  const at::Tensor p = probs.contiguous();
  const float* fused = p.data_ptr<float>();
  const int64_t classes = p.size(1);
  std::vector<int64_t> mistakes;
  for (int64_t i = 0; i < p.size(0); ++i) {
    if (predicted[i] != labels[i]) mistakes.push_back(i);
  }
  auto confidence = [&](int64_t i) { return fused[i * classes + predicted[i]]; };
  std::stable_sort(mistakes.begin(), mistakes.end(), [&](int64_t a, int64_t b) {
    return confidence(a) > confidence(b);
  });
  mistakes.resize(std::min<size_t>(mistakes.size(), static_cast<size_t>(count)));
  return mistakes;
}

}  // namespace html

using namespace html;

std::string base64_encode(const std::string& bytes) {
  static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t n =
        (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += table[(n >> 6) & 63];
    out += table[n & 63];
  }
  if (i < bytes.size()) {
    uint32_t n = uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= uint8_t(bytes[i + 1]) << 8;
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += i + 1 < bytes.size() ? table[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

namespace {

/// Accuracy of every fusion rule and of each patch position alone, on the same outputs.
std::string rules_table(const Evaluation& e, PatchClassifier& model) {
  std::ostringstream html;
  html << "<h2>Accuracy per fusion rule and per patch position</h2><table><tr><th class=\"name\">"
          "fusion rule (same patch outputs)</th><th>accuracy</th><th>± s.e.</th></tr>";
  for (const RuleAccuracy& r : e.rules) {
    html << fmt::format(
        "<tr><td class=\"name\">{}{}</td><td>{:.4f}</td><td>{:.4f}</td></tr>",
        r.rule,
        r.rule == e.fusion ? " (the model's)" : "",
        r.accuracy,
        r.accuracy_stderr);
  }
  for (size_t p = 0; p < e.position_accuracy.size(); ++p) {
    const PatchBox& b = model->grid().boxes()[p];
    html << fmt::format(
        "<tr><td class=\"name\">patch {} alone (y {}, x "
        "{}{})</td><td>{:.4f}</td><td>{:.4f}</td></tr>",
        p + 1,
        b.y,
        b.x,
        b.flip ? ", mirrored" : "",
        e.position_accuracy[p],
        binomial_stderr(e.position_accuracy[p], e.n));
  }
  html << "</table>";
  return html.str();
}

/// The sliding-patch heatmaps of the first images.
std::string heatmaps_section(
    PatchClassifier& model, const Dataset& data, const ReportOptions& options,
    const std::vector<std::string>& names) {
  std::ostringstream html;
  const int64_t heatmaps = std::min(options.heatmaps, data.size());
  html << "<h2>Heatmaps</h2><p>Every position of the model's patch at stride "
       << options.heatmap_stride
       << ", classified alone; the colour is the mean probability of the predicted class over "
          "the patches covering each pixel.</p><div class=\"cards\">";
  HeatmapOptions hm;
  hm.stride = std::min(options.heatmap_stride, std::min(data.height(), data.width()));
  for (int64_t i = 0; i < heatmaps; ++i) {
    Heatmap h = compute_heatmap(model, data.image(i), hm);
    const std::string title = fmt::format("#{} p({})", i, names[h.target_class]);
    html << "<div class=\"card\">" << img_tag(render_heatmap(data.image(i), h, title), title)
         << "</div>";
  }
  return html.str() + "</div>";
}

/// What the report's one pass keeps of every image: [N,K] fused probabilities, [N,P,K]
/// per-patch probabilities, [N] predicted classes.
struct GridOutputs {
  at::Tensor fused, per_patch, predicted;
};

/// The line under the title and the headline figures.
std::string grid_summary(
    PatchClassifier& model, const Dataset& data, const ReportOptions& options,
    const Evaluation& e) {
  const ModelConfig& config = model->config();
  std::string html = "<div class=\"sub\">" +
                     escape(fmt::format(
                         "{} — {} on a {}, fusion {}; {} images from {}",
                         options.model_path,
                         config.backbone.name,
                         model->grid().describe(),
                         fusion_rule_name(config.fusion),
                         e.n,
                         data.source)) +
                     "</div>";
  return html + fmt::format(
                    "<div class=\"kpi\"><div>accuracy<b>{:.4f} ± {:.4f}</b></div><div>mean "
                    "patch accuracy<b>{:.4f}</b></div><div>fused loss<b>{:.4f}</b></div>"
                    "<div>images<b>{}</b></div></div>",
                    e.accuracy,
                    e.accuracy_stderr,
                    e.patch_accuracy,
                    e.loss,
                    e.n);
}

/// One image's card: its patches, each patch's top classes and the fused ones.
std::string grid_card(
    PatchClassifier& model, const Dataset& data, const GridOutputs& r, int64_t i) {
  const std::vector<std::string>& names = model->config().class_names;
  const int64_t classes = model->num_classes();
  const int64_t truth = data.labels[i].item<int64_t>();
  const int64_t pred = r.predicted[i].item<int64_t>();
  std::string c =
      "<div class=\"card\">" + card_title(i, names, truth, pred, r.fused[i][pred].item<float>());
  PatchSheetOptions sheet;
  sheet.cell = 64;
  c += img_tag(
      render_patch_sheet(data.image(i), model->grid(), sheet),
      "patches of image " + std::to_string(i));
  c += "<div class=\"patches\">";
  at::Tensor pp = r.per_patch[i].contiguous();
  for (int64_t p = 0; p < model->num_patches(); ++p) {
    c += fmt::format("<div>patch {}", p + 1) +
         probability_bars(names, pp[p].data_ptr<float>(), classes, 3, truth) + "</div>";
  }
  at::Tensor fp = r.fused[i].contiguous();
  c += "</div><div>fused" + probability_bars(names, fp.data_ptr<float>(), classes, 3, truth) +
       "</div>";
  return c + "</div>";
}

}  // namespace

std::string build_html_report(
    PatchClassifier& model, const Dataset& data, const nlohmann::json& training,
    const ReportOptions& options) {
  const ModelConfig& config = model->config();
  // One pass: the evaluation, and each image's fused and per-patch probabilities for the
  // gallery and the mistakes.
  GridOutputs r;
  r.fused = torch::empty({data.size(), model->num_classes()});
  r.per_patch = torch::empty({data.size(), model->num_patches(), model->num_classes()});
  int64_t offset = 0;
  Evaluation e = evaluate(
      model,
      data,
      options.batch,
      /*all_rules=*/true,
      {},
      [&](const Batch& b, const PatchOutput& out) {
        const int64_t n = b.labels.size(0);
        r.fused.narrow(0, offset, n).copy_(out.log_probs.exp().cpu());
        r.per_patch.narrow(0, offset, n).copy_(torch::softmax(out.patch_logits, 2).cpu());
        offset += n;
      });
  r.predicted = r.fused.argmax(1);
  const int64_t* labels = data.labels.data_ptr<int64_t>();

  std::ostringstream html;
  html << page_start(options.title) << grid_summary(model, data, options, e);
  html << training_curves(training);
  html << rules_table(e, model);
  html << confusion_table(config.class_names, e.confusion);

  const int64_t gallery = std::min(options.gallery, data.size());
  html << "<h2>Gallery</h2><div class=\"cards\">";
  for (int64_t i = 0; i < gallery; ++i) html << grid_card(model, data, r, i);
  html << "</div>";

  const std::vector<int64_t> mistakes =
      confident_mistakes(r.fused, r.predicted.data_ptr<int64_t>(), labels, options.mistakes);
  html << "<h2>Most confident mistakes</h2>";
  if (mistakes.empty()) html << "<p>None: every image is classified correctly.</p>";
  html << "<div class=\"cards\">";
  for (int64_t i : mistakes) html << grid_card(model, data, r, i);
  html << "</div>";

  html << heatmaps_section(model, data, options, config.class_names);
  html << "</body></html>\n";
  return html.str();
}

}  // namespace patchwise
