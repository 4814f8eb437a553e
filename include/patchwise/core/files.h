#pragma once
// Output paths: checked before any work starts, written atomically; scratch files for
// readers that only take a path.

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
void write_file_atomically(
    const std::string& path, const std::string& flag,
    const std::function<void(std::ostream&)>& write);

/// Writes `bytes` to a scratch file in `dir` (a unique name ending in `extension`), runs
/// `read` on its path and removes it. An InputError from `read` is rethrown with the
/// scratch path replaced by `name`, so that the message names what the bytes came from.
void with_scratch_file(
    const std::string& bytes, const std::string& dir, const std::string& extension,
    const std::string& name, const std::function<void(const std::string& path)>& read);

}  // namespace patchwise
