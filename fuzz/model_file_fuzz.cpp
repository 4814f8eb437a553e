// The model-file loader on arbitrary bytes: once as they are (the checksum refuses
// almost every mutation), and once resealed with a matching checksum so that the
// mutations reach the configuration's JSON, the tensor records and the shape checks.
#include <zlib.h>

#include "fuzz_support.h"
#include "patchwise/model/model_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace patchwise;
  const std::string path = fuzz::write_input("input.pw", data, size);
  fuzz::expect_accept_or_refuse([&] { load_model(path); });

  std::string sealed(reinterpret_cast<const char*>(data), size);
  if (sealed.size() >= 8 && sealed.compare(sealed.size() - 8, 4, kChecksumTag) == 0) {
    sealed.resize(sealed.size() - 8);
  }
  const auto sum = static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(sealed.data()), sealed.size()));
  sealed += kChecksumTag;
  for (int i = 0; i < 4; ++i) sealed.push_back(char(uint8_t(sum >> (8 * i))));
  const std::string resealed = fuzz::write_input(
      "resealed.pw", reinterpret_cast<const uint8_t*>(sealed.data()), sealed.size());
  fuzz::expect_accept_or_refuse([&] { load_model(resealed); });
  fuzz::expect_accept_or_refuse([&] { load_model_state(resealed); });
  return 0;
}
