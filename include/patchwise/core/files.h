#pragma once
// Output paths: checked before any work starts, written atomically.

#include <functional>
#include <iosfwd>
#include <string>

namespace patchwise {

/// Fails early (InputError naming `flag`) when `path` cannot be created: its folder
/// is missing or not writable, or it names a directory. Touches nothing.
void check_output_writable(const std::string& path, const std::string& flag);

/// Writes a file through `write` under a temporary name in the same folder, then
/// renames it over `path`: a crash or an error never leaves a half-written file,
/// and an existing file at `path` stays intact until the new one is complete.
void write_file_atomically(const std::string& path, const std::string& flag,
                           const std::function<void(std::ostream&)>& write);

}  // namespace patchwise
