#pragma once
// Little-endian integers in byte strings, shared by the file formats in src/model (model
// files, zip archives). Callers check `at + width` against the size first.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace patchwise::detail {

inline uint64_t read_le(std::string_view bytes, size_t at, size_t width) {
  uint64_t value = 0;
  for (size_t i = 0; i < width; ++i) value |= uint64_t(uint8_t(bytes[at + i])) << (8 * i);
  return value;
}

inline void put_le(std::string& out, uint64_t value, size_t width) {
  for (size_t i = 0; i < width; ++i) out.push_back(char(uint8_t(value >> (8 * i))));
}

}  // namespace patchwise::detail
