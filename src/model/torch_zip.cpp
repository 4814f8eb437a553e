#include "torch_zip.h"

#include <fmt/format.h>
#include <zlib.h>

#include <string>
#include <utility>
#include <vector>

#include "little_endian.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/model/torch_import.h"

namespace patchwise {
namespace {

using detail::Archive;
using detail::put_le;
using detail::read_le;

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndRecord = 0x06054b50;
constexpr size_t kLocalSize = 30;
constexpr size_t kCentralSize = 46;
constexpr size_t kEndSize = 22;

/// Where the end-of-central-directory record starts (it may be followed by a comment).
size_t find_end_record(std::string_view file, const std::string& path) {
  const bool zip = file.size() >= 4 && read_le(file, 0, 4) == kLocalHeader;
  if (file.size() >= kEndSize) {
    const size_t lowest = file.size() - kEndSize > 0xffff ? file.size() - kEndSize - 0xffff : 0;
    for (size_t at = file.size() - kEndSize + 1; at-- > lowest;) {
      if (read_le(file, at, 4) == kEndRecord) return at;
    }
  }
  check_input(
      !zip,
      "{}: truncated zip archive (no end record), expected a whole file from torch.save",
      path);
  throw InputError(fmt::format(
      "{}: not a PyTorch archive (no zip end record), expected a file written by torch.save",
      path));
}

/// The `size` bytes of entry `name` after its local header at `local`.
std::string_view local_data(
    std::string_view file, uint64_t local, const std::string& name, uint64_t size,
    const std::string& path) {
  check_input(
      local + kLocalSize <= file.size() && read_le(file, local, 4) == kLocalHeader &&
          read_le(file, local + 26, 2) == name.size() &&
          file.substr(local + kLocalSize, name.size()) == name,
      "{}: entry '{}' has no matching local header at byte {}",
      path,
      printable(name),
      local);
  const uint64_t data = local + kLocalSize + name.size() + read_le(file, local + 28, 2);
  check_input(
      data + size <= file.size(),
      "{}: entry '{}' of {} bytes at byte {} runs past the end of the file ({} bytes)",
      path,
      printable(name),
      size,
      data,
      file.size());
  return file.substr(data, size);
}

/// Reads one central directory entry at `at` (before `end`) into `archive`; returns where
/// the next one starts.
size_t read_entry(std::string_view file, size_t at, size_t end, Archive& archive) {
  const std::string& path = archive.path;
  check_input(
      at + kCentralSize <= end && read_le(file, at, 4) == kCentralHeader,
      "{}: broken zip central directory at byte {}, expected an entry header",
      path,
      at);
  const size_t name_size = read_le(file, at + 28, 2);
  const size_t next =
      at + kCentralSize + name_size + read_le(file, at + 30, 2) + read_le(file, at + 32, 2);
  check_input(next <= end, "{}: zip entry at byte {} overruns the central directory", path, at);
  const std::string name(file.substr(at + kCentralSize, name_size));
  const uint64_t method = read_le(file, at + 10, 2);
  check_input(
      method == 0,
      "{}: entry '{}' is {}, expected stored (torch.save's format)",
      path,
      printable(name),
      method == 8 ? std::string("deflate-compressed")
                  : fmt::format("compressed (method {})", method));
  const uint64_t size = read_le(file, at + 24, 4);
  check_input(
      (read_le(file, at + 8, 2) & 1) == 0 && read_le(file, at + 20, 4) == size &&
          size != 0xffffffff,
      "{}: entry '{}' is encrypted, zip64 or of inconsistent sizes, expected a stored entry",
      path,
      printable(name));
  const std::string_view bytes = local_data(file, read_le(file, at + 42, 4), name, size, path);
  const uLong crc =
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), uInt(size));
  check_input(
      crc == read_le(file, at + 16, 4),
      "{}: entry '{}' fails its CRC-32: the file is corrupt",
      path,
      printable(name));
  check_input(
      archive.entries.emplace(name, bytes).second,
      "{}: entry '{}' appears twice",
      path,
      printable(name));
  return next;
}

/// The top folder holding data.pkl, checked for a little-endian byte order.
void find_prefix(Archive& archive) {
  std::vector<std::string> found;
  for (const auto& entry : archive.entries) {
    const std::string& name = entry.first;
    const size_t slash = name.find('/');
    if (slash != std::string::npos && name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      found.push_back(name.substr(0, slash + 1));
    }
  }
  check_input(
      found.size() == 1,
      "{}: {} '<folder>/data.pkl' entries, expected one (a file written by torch.save)",
      archive.path,
      found.size());
  archive.prefix = found[0];
  if (const std::string_view* order = archive.find("byteorder")) {
    check_input(
        *order == "little",
        "{}: byte order '{}', expected 'little'",
        archive.path,
        printable(*order));
  }
}

}  // namespace

namespace detail {

Archive open_archive(std::string_view file, const std::string& path) {
  const size_t end_at = find_end_record(file, path);
  const uint64_t count = read_le(file, end_at + 10, 2);
  const uint64_t size = read_le(file, end_at + 12, 4);
  const uint64_t start = read_le(file, end_at + 16, 4);
  check_input(
      read_le(file, end_at + 4, 4) == 0 && read_le(file, end_at + 8, 2) == count &&
          count != 0xffff && start != 0xffffffff && start + size <= end_at,
      "{}: zip end record of a split or zip64 archive, or its central directory out of "
      "bounds, expected a single archive as torch.save writes",
      path);
  Archive archive;
  archive.path = path;
  size_t at = start;
  for (uint64_t i = 0; i < count; ++i) at = read_entry(file, at, start + size, archive);
  find_prefix(archive);
  return archive;
}

}  // namespace detail

std::string stored_zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string out, central;
  for (const auto& [name, data] : entries) {
    const uLong crc =
        crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(data.data()), uInt(data.size()));
    const size_t offset = out.size();
    for (std::string* header : {&out, &central}) {
      const bool local = header == &out;
      put_le(*header, local ? kLocalHeader : kCentralHeader, 4);
      if (!local) put_le(*header, 20, 2);  // made by
      put_le(*header, 20, 2);              // needed
      put_le(*header, 0, 6);               // flags, method (stored), time
      put_le(*header, 0, 2);               // date
      put_le(*header, crc, 4);
      put_le(*header, data.size(), 4);
      put_le(*header, data.size(), 4);
      put_le(*header, name.size(), 2);
      header->append(local ? 2 : 12, '\0');  // extra; comment, disk, attributes
      if (!local) put_le(*header, offset, 4);
      *header += name;
    }
    out += data;
  }
  const size_t start = out.size();
  out += central;
  put_le(out, kEndRecord, 4);
  put_le(out, 0, 4);
  put_le(out, entries.size(), 2);
  put_le(out, entries.size(), 2);
  put_le(out, central.size(), 4);
  put_le(out, start, 4);
  put_le(out, 0, 2);
  return out;
}

}  // namespace patchwise
