// The web page of patchwise serve in a real browser: headless chromium driven by npm's
// puppeteer-core (scripts/get-puppeteer) uploads an image and reads the class shown.

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "patchwise/data/image.h"
#include "patchwise/model/model_file.h"
#include "patchwise/report/prediction.h"
#include "patchwise/serve/server.h"
#include "support/model_support.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

/// stdout of `command` ("" when it fails).
std::string output_of(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) out.append(buffer, n);
  return ::pclose(pipe) == 0 ? out : "";
}

class PageTest : public test::SeededTest {};

TEST_F(PageTest, UploadsAnImageAndShowsTheModelsClass) {
  for (const char* tool : {"/usr/bin/chromium", "/usr/bin/node"}) {
    if (!std::filesystem::exists(tool))
      GTEST_SKIP() << tool << " is missing (scripts/install-deps)";
  }
  const std::string module = output_of(PATCHWISE_SOURCE_DIR "/scripts/get-puppeteer");
  ASSERT_FALSE(module.empty()) << "scripts/get-puppeteer could not install puppeteer-core";

  PatchClassifier model = test::random_grid_model({"ankle boot", "sneaker", "sandal"});
  save_model(path("m.pw"), model, nullptr);
  const at::Tensor image = torch::randint(0, 256, {1, 28, 28}, torch::kUInt8);
  write_image(path("shoe.png"), image);
  std::string expected;
  {
    torch::InferenceMode guard;
    const PatchOutput out = model->forward(image.unsqueeze(0));
    expected = grid_prediction_json(*model, "", out.patch_logits[0], out.log_probs[0])["label"];
  }

  ServeOptions options;
  options.port = 0;
  ModelServer server(path("m.pw"), options);
  const int port = server.bind();
  std::thread serving([&] { server.serve(); });
  const std::string answer = output_of(fmt::format(
      "timeout 150 node {}/tests/serve/page_driver.cjs '{}' http://127.0.0.1:{}/ '{}' '{}'",
      PATCHWISE_SOURCE_DIR,
      module.substr(0, module.find('\n')),
      port,
      path("shoe.png"),
      path("shot.png")));
  server.stop();
  serving.join();

  ASSERT_FALSE(answer.empty()) << "the browser did not finish (see the test's stderr)";
  const auto shown = nlohmann::json::parse(answer);
  EXPECT_EQ(shown["error"], "");
  EXPECT_THAT(shown["result"].get<std::string>(), ::testing::StartsWith(expected + " ("));
  EXPECT_EQ(shown["boxes"], 4) << "one block of bars per patch";
  EXPECT_GT(shown["outlined"].get<int>(), 200) << "no patch outlines drawn over the image";
  EXPECT_EQ(shown["overflow"], false) << "the page is wider than a phone's screen";
  const at::Tensor shot = read_image(path("shot.png"), 1).to(torch::kFloat);
  EXPECT_EQ(shot.size(2), 390);
  EXPECT_GT(shot.std().item<double>(), 10.0) << "the screenshot is (nearly) one flat colour";
  EXPECT_GT(std::get<0>(at::_unique(shot.to(torch::kUInt8))).numel(), 30);
}

}  // namespace
}  // namespace patchwise
