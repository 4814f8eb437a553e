// The CIFAR binary reader on arbitrary bytes, in its CIFAR-10 and CIFAR-100 forms.
#include "fuzz_support.h"
#include "patchwise/data/cifar.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace patchwise;
  const std::string path = fuzz::write_input("data_batch_1.bin", data, size);
  fuzz::expect_accept_or_refuse([&] { read_cifar_file(path, 1, 0, 10); });
  fuzz::expect_accept_or_refuse([&] { read_cifar_file(path, 2, 1, 100); });
  return 0;
}
