#include "patchwise/report/html_report.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>

#include "patchwise/fusion/fusion.h"
#include "patchwise/model/evaluation.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kChromium = "/usr/bin/chromium";
constexpr int kShotWidth = 1200;
constexpr int kShotHeight = 2400;

Dataset small_set(int64_t n) {
  Dataset d;
  d.images = torch::randint(0, 256, {n, 1, 28, 28}, torch::kUInt8);
  d.labels = torch::arange(n, torch::kInt64) % 3;
  d.class_names = {"alpha", "beta", "<gamma>"};
  d.source = "synthetic";
  return d;
}

PatchClassifier small_model(const Dataset& d) {
  ModelConfig c;
  c.class_names = d.class_names;
  c.backbone.num_classes = 3;
  c.normalization = compute_normalization(d.images);
  return PatchClassifier(c);
}

nlohmann::json history() {
  return {
      {"history",
       {{{"epoch", 1},
         {"loss", 1.0},
         {"accuracy", 0.5},
         {"test_loss", 0.9},
         {"test_accuracy", 0.6}},
        {{"epoch", 2},
         {"loss", 0.7},
         {"accuracy", 0.7},
         {"test_loss", 0.8},
         {"test_accuracy", 0.65}}}}};
}

class HtmlReportTest : public test::SeededTest {};

TEST_F(HtmlReportTest, HoldsEverySectionInlineAndEscapesNames) {
  Dataset d = small_set(40);
  PatchClassifier model = small_model(d);
  ReportOptions o;
  o.gallery = 3;
  o.heatmaps = 2;
  const std::string html = build_html_report(model, d, history(), o);
  for (const char* section :
       {"Training curves",
        "Accuracy per fusion rule",
        "Confusion matrix",
        "Gallery",
        "Most confident mistakes",
        "Heatmaps"}) {
    EXPECT_THAT(html, HasSubstr(section));
  }
  EXPECT_THAT(html, HasSubstr("<svg"));
  EXPECT_THAT(html, HasSubstr("data:image/png;base64,"));
  EXPECT_THAT(html, HasSubstr("&lt;gamma&gt;"));
  EXPECT_THAT(html, Not(HasSubstr("<gamma>")));
  EXPECT_THAT(html, Not(HasSubstr("http://")));  // self-contained: nothing to fetch
  EXPECT_THAT(html, Not(HasSubstr("https://")));
}

TEST_F(HtmlReportTest, SaysSoWhenTheModelHasNoHistory) {
  Dataset d = small_set(10);
  PatchClassifier model = small_model(d);
  const std::string html = build_html_report(model, d, nullptr, {});
  EXPECT_THAT(html, HasSubstr("no training history"));
  EXPECT_THAT(html, Not(HasSubstr("<svg")));
}

TEST_F(HtmlReportTest, ConfusionMatrixBehindTheReportSumsToN) {
  Dataset d = small_set(37);
  PatchClassifier model = small_model(d);
  Evaluation e = evaluate(model, d, 8, /*all_rules=*/true);
  int64_t total = 0;
  for (const auto& row : e.confusion)
    for (int64_t v : row) total += v;
  EXPECT_EQ(total, 37);
  EXPECT_EQ(e.rules.size(), fixed_fusion_rules().size());
}

TEST(Base64, EncodesTheRfcVectors) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
}

// Renders the report in headless Chromium and checks the screenshot: the expected
// size, and a page that is not blank (many distinct colours, not one flat fill).
TEST_F(HtmlReportTest, RendersInHeadlessChromium) {
  if (!std::filesystem::exists(kChromium)) {
    GTEST_SKIP() << kChromium << " is not installed (scripts/install-deps installs it)";
  }
  Dataset d = small_set(30);
  PatchClassifier model = small_model(d);
  ReportOptions o;
  o.gallery = 4;
  o.heatmaps = 2;
  std::ofstream(path("report.html")) << build_html_report(model, d, history(), o);
  const std::string shot = path("shot.png");
  const std::string command = fmt::format(
      "{} --headless --no-sandbox --disable-gpu --disable-background-networking "
      "--disable-component-update --disable-sync --no-first-run --hide-scrollbars "
      "--user-data-dir={} --window-size={},{} --screenshot={} file://{} >{} 2>&1",
      kChromium,
      path("profile"),
      kShotWidth,
      kShotHeight,
      shot,
      path("report.html"),
      path("chromium.log"));
  const int status = std::system(("timeout 120 " + command).c_str());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << command;
  cv::Mat picture = cv::imread(shot, cv::IMREAD_COLOR);
  ASSERT_FALSE(picture.empty());
  EXPECT_EQ(picture.cols, kShotWidth);
  EXPECT_EQ(picture.rows, kShotHeight);
  cv::Mat gray;
  cv::cvtColor(picture, gray, cv::COLOR_BGR2GRAY);
  cv::Scalar mean, stddev;
  cv::meanStdDev(gray, mean, stddev);
  EXPECT_GT(stddev[0], 10.0) << "the screenshot is (nearly) one flat colour";
  std::set<int> levels(gray.begin<uint8_t>(), gray.end<uint8_t>());
  EXPECT_GT(levels.size(), 50u);
}

}  // namespace
}  // namespace patchwise
