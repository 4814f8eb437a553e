#pragma once
// The zip layer of reading torch.save's files (torch_import.h): the entries of a stored
// (uncompressed) archive, every offset and size checked against the bytes present and
// every CRC-32 checked, viewed in place in the file's bytes.

#include <map>
#include <string>
#include <string_view>

namespace patchwise::detail {

/// The entries of a torch.save archive below its top folder ("<prefix>/").
struct Archive {
  std::string path;  ///< the file, for messages
  std::string prefix;
  std::map<std::string, std::string_view> entries;  ///< full name -> bytes in the file

  const std::string_view* find(const std::string& name) const {
    auto it = entries.find(prefix + name);
    return it == entries.end() ? nullptr : &it->second;
  }
};

/// The archive in `file` (read from `path`, named in messages): InputError with one line
/// when it is not a single stored zip archive with one "<folder>/data.pkl", or is
/// truncated, compressed, encrypted, zip64 or corrupt.
Archive open_archive(std::string_view file, const std::string& path);

}  // namespace patchwise::detail
