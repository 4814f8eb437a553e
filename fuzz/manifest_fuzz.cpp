// CSV manifests on arbitrary bytes: both splits and the test-split probe. The folder
// beside the manifest holds two images (a.png, b/c.jpg) so that lines naming them get
// past the file check and reach class and split handling.
#include <filesystem>

#include "fuzz_support.h"
#include "patchwise/data/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace patchwise;
  static const bool images = [] {
    std::filesystem::create_directories(fuzz::scratch_dir() / "b");
    fuzz::write_input("a.png", reinterpret_cast<const uint8_t*>("png"), 3);
    fuzz::write_input("b/c.jpg", reinterpret_cast<const uint8_t*>("jpg"), 3);
    return true;
  }();
  (void)images;
  const std::string path = fuzz::write_input("input.csv", data, size);
  fuzz::expect_accept_or_refuse([&] { manifest_has_test(path); });
  for (const char* split : {"train", "test"}) {
    fuzz::expect_accept_or_refuse([&] { read_manifest(path, split); });
  }
  return 0;
}
