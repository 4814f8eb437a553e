#include "patchwise/base/files.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "patchwise/base/error.h"

namespace patchwise {

namespace fs = std::filesystem;

namespace {

/// The length of the UTF-8 sequence starting at text[i], or 0 where none starts.
size_t utf8_length(std::string_view text, size_t i) {
  const auto c = static_cast<unsigned char>(text[i]);
  const size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
  if (n == 0 || i + n > text.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(text[i + k]) & 0xc0) != 0x80) return 0;
  }
  return n;
}

std::string escaped(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (const size_t n = c >= 0x80 ? utf8_length(text, i) : 0; n > 0) {
      out.append(text.substr(i, n));
      i += n - 1;
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  return out;
}

}  // namespace

std::string printable(std::string_view text, size_t limit) {
  if (text.size() <= limit) return escaped(text);
  const size_t keep = limit / 2;
  return fmt::format(
      "{}...{} ({} bytes)",
      escaped(text.substr(0, keep)),
      escaped(text.substr(text.size() - keep)),
      text.size());
}

std::string not_a_regular_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    switch (errno) {
      case ENOENT:
        return "nothing";
      case ELOOP:
        return "a loop of symbolic links";
      case ENAMETOOLONG:
        return "a name too long for the file system";
      case EACCES:
        return "a path this user may not search";
      case ENOTDIR:
        return "a path through something that is not a folder";
      default:
        return std::strerror(errno);
    }
  }
  if (S_ISREG(st.st_mode)) return "";
  return S_ISDIR(st.st_mode)    ? "a directory"
         : S_ISFIFO(st.st_mode) ? "a FIFO"
         : S_ISCHR(st.st_mode)  ? "a character device"
         : S_ISBLK(st.st_mode)  ? "a block device"
         : S_ISSOCK(st.st_mode) ? "a socket"
                                : "a special file";
}

void check_readable_file(const std::string& path, const std::string& noun) {
  const std::string found = not_a_regular_file(path);
  check_input(found != "nothing", "{}: no such {}", printable(path), noun);
  const bool vowel = !noun.empty() && std::string("aeiou").find(noun[0]) != std::string::npos;
  check_input(
      found.empty(),
      "{}: expected {} {}, found {}",
      printable(path),
      vowel ? "an" : "a",
      noun,
      found);
}

void check_output_writable(const std::string& path, const std::string& flag) {
  check_input(!path.empty(), "{}: empty output path", flag);
  const std::string found = not_a_regular_file(path);
  // A file that is not there yet is fine; anything else but a regular file is not.
  check_input(
      found.empty() || found == "nothing",
      "{}: {} is {}, expected a file path",
      flag,
      printable(path),
      found);
  fs::path p(path);
  fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const std::string folder = not_a_regular_file(dir.string());
  check_input(
      folder != "nothing",
      "{}: folder {} of {} does not exist",
      flag,
      printable(dir.string()),
      printable(path));
  check_input(
      folder == "a directory",
      "{}: folder {} of {} is {}, expected a folder",
      flag,
      printable(dir.string()),
      printable(path),
      folder.empty() ? "a file" : folder);
  check_input(
      access(dir.c_str(), W_OK) == 0,
      "{}: folder {} of {} is not writable",
      flag,
      printable(dir.string()),
      printable(path));
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
