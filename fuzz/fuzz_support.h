#pragma once
// Shared by the fuzz targets: the parsers read files, so each input is written to a
// per-process temporary file first. A parser may refuse an input only with
// InputError; anything else (another exception, a crash, a sanitizer report, a
// leak) is a finding.

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "patchwise/base/error.h"

namespace patchwise::fuzz {

/// A folder of this process's own under the temporary directory, made once.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d =
        std::filesystem::temp_directory_path() / ("patchwise-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

/// Writes `size` bytes to scratch_dir()/name and returns the path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = (scratch_dir() / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

/// Runs `parse`, accepting InputError as the one legitimate refusal.
template <typename F>
void expect_accept_or_refuse(F&& parse) {
  try {
    parse();
  } catch (const InputError&) {
  }
}

}  // namespace patchwise::fuzz
