#include "patchwise/data/digits_json.h"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "patchwise/base/error.h"

namespace patchwise {

Dataset read_digits_json(const std::string& dir) {
  namespace fs = std::filesystem;
  check_input(
      fs::is_directory(dir), "{}: no such folder, expected the mnist package's digits", dir);
  std::vector<at::Tensor> images, labels;
  for (int digit = 0; digit <= 9; ++digit) {
    const std::string path = (fs::path(dir) / (std::to_string(digit) + ".json")).string();
    check_input(fs::is_regular_file(path), "{}: missing, expected 0.json ... 9.json", path);
    nlohmann::json j;
    try {
      std::ifstream in(path);
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw InputError(fmt::format("{}: not valid JSON ({})", path, e.what()));
    }
    check_input(
        j.is_object() && j.contains("data") && j["data"].is_array(),
        "{}: expected an object with a \"data\" array",
        path);
    const nlohmann::json& data = j["data"];
    const int64_t values = static_cast<int64_t>(data.size());
    check_input(
        values > 0 && values % kDigitPixels == 0,
        "{}: {} values, expected a multiple of {} (one 28x28 digit each)",
        path,
        values,
        kDigitPixels);
    const int64_t count = values / kDigitPixels;
    at::Tensor pixels = torch::empty({count, 1, kDigitSide, kDigitSide}, torch::kUInt8);
    uint8_t* out = pixels.data_ptr<uint8_t>();
    for (int64_t i = 0; i < values; ++i) {
      const nlohmann::json& v = data[static_cast<size_t>(i)];
      const double x = v.is_number() ? v.get<double>() : std::nan("");
      check_input(
          std::isfinite(x) && x >= 0.0 && x <= 1.0,
          "{}: digit {} value {} is {}, expected a number in [0, 1]",
          path,
          i / kDigitPixels,
          i % kDigitPixels,
          v.dump());
      out[i] = static_cast<uint8_t>(std::lround(x * 255.0));
    }
    images.push_back(pixels);
    labels.push_back(torch::full({count}, digit, torch::kInt64));
  }
  Dataset d;
  d.images = torch::cat(images, 0);
  d.labels = torch::cat(labels, 0);
  for (int k = 0; k <= 9; ++k) d.class_names.push_back(std::to_string(k));
  d.source = dir;
  return d;
}

}  // namespace patchwise
