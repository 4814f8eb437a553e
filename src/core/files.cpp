#include "patchwise/core/files.h"

#include <unistd.h>

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
  check_input(fs::is_directory(dir), "{}: folder {} of {} does not exist", flag, dir.string(),
              path);
  check_input(access(dir.c_str(), W_OK) == 0, "{}: folder {} of {} is not writable", flag,
              dir.string(), path);
}

void write_file_atomically(const std::string& path, const std::string& flag,
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

}  // namespace patchwise
