#include "patchwise/core/files.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "patchwise/core/error.h"

namespace patchwise {

namespace fs = std::filesystem;

void check_output_writable(const std::string& path, const std::string& flag) {
  check_input(!path.empty(), "{}: empty output path", flag);
  fs::path p(path);
  check_input(!fs::is_directory(p), "{}: {} is a directory, expected a file path", flag, path);
  fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  check_input(
      fs::is_directory(dir), "{}: folder {} of {} does not exist", flag, dir.string(), path);
  check_input(
      access(dir.c_str(), W_OK) == 0,
      "{}: folder {} of {} is not writable",
      flag,
      dir.string(),
      path);
}

void write_file_atomically(
    const std::string& path, const std::string& flag,
    const std::function<void(std::ostream&)>& write) {
  check_output_writable(path, flag);
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    check_input(out.good(), "{}: cannot open {} for writing", flag, tmp);
    write(out);
    out.flush();
    check_input(out.good(), "{}: writing {} failed (disk full?)", flag, tmp);
    out.close();
    fs::rename(tmp, path);
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

void with_scratch_file(
    const std::string& bytes, const std::string& dir, const std::string& extension,
    const std::string& name, const std::function<void(const std::string& path)>& read) {
  static std::atomic<uint64_t> count{0};
  const std::string path = (fs::path(dir) / ("patchwise-" + std::to_string(::getpid()) + "-" +
                                             std::to_string(count.fetch_add(1)) + extension))
                               .string();
  {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    check_input(static_cast<bool>(out), "{}: cannot write a scratch copy to {}", name, dir);
  }
  struct Remove {
    std::string path;
    ~Remove() { std::remove(path.c_str()); }
  } remove{path};
  try {
    read(path);
  } catch (const InputError& e) {
    std::string message = e.what();
    for (size_t at = 0; (at = message.find(path, at)) != std::string::npos; at += name.size()) {
      message.replace(at, path.size(), name);
    }
    throw InputError(message);
  }
}

}  // namespace patchwise
