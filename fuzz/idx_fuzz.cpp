// The IDX reader (plain or gzip) on arbitrary bytes, as images and as labels.
#include "fuzz_support.h"
#include "patchwise/data/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace patchwise;
  const std::string path = fuzz::write_input("input-idx3-ubyte", data, size);
  fuzz::expect_accept_or_refuse([&] { read_idx_images(path); });
  fuzz::expect_accept_or_refuse([&] { read_idx_labels(path); });
  return 0;
}
