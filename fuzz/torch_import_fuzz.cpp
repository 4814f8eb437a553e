// The torch.save reader on arbitrary bytes: once as a whole file (the zip layer), and once
// as the pickle of an otherwise valid archive whose records '0' to '3' hold 64 bytes each,
// so that mutations reach the unpickler's opcodes, calls and bounds. What it reads goes
// into a small model, through the name mapping and the shape checks.
#include "fuzz_support.h"
#include "patchwise/model/torch_import.h"

namespace {

void read_and_import(const std::string& path) {
  using namespace patchwise;
  static PatchClassifier model = [] {
    ModelConfig config;
    config.class_names = {"a", "b"};
    config.backbone.num_classes = 2;
    return PatchClassifier(config);
  }();
  const TensorMap state = read_torch_state_dict(path);
  fuzz::expect_accept_or_refuse([&] { import_torch_weights(model, state, path, true); });
  fuzz::expect_accept_or_refuse([&] { import_torch_weights(model, state, path, false); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace patchwise;
  const std::string path = fuzz::write_input("input.pt", data, size);
  fuzz::expect_accept_or_refuse([&] { read_and_import(path); });

  std::vector<std::pair<std::string, std::string>> entries = {
      {"archive/data.pkl", std::string(reinterpret_cast<const char*>(data), size)}};
  for (int i = 0; i < 4; ++i) {
    entries.emplace_back("archive/data/" + std::to_string(i), std::string(64, char(i)));
  }
  const std::string archive = stored_zip(entries);
  const std::string wrapped = fuzz::write_input(
      "wrapped.pt", reinterpret_cast<const uint8_t*>(archive.data()), archive.size());
  fuzz::expect_accept_or_refuse([&] { read_and_import(wrapped); });
  return 0;
}
