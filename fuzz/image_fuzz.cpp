// Image decoding (OpenCV's decoders behind read_image) on arbitrary bytes, as the
// file's own channels and converted to grayscale and RGB.
#include "fuzz_support.h"
#include "patchwise/data/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace patchwise;
  const std::string path = fuzz::write_input("input.img", data, size);
  for (int64_t channels : {0, 1, 3}) {
    fuzz::expect_accept_or_refuse([&] { read_image(path, channels); });
  }
  return 0;
}
