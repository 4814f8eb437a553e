#pragma once
// Output paths: checked before any work starts, written atomically; scratch files for
// readers that only take a path.

#include <functional>
#include <iosfwd>
#include <string>
#include <string_view>

namespace patchwise {

/// `text` fit for a one-line message: control characters and bytes that are not UTF-8
/// escaped (\n, \x00), and a value longer than `limit` shortened in the middle, keeping
/// both ends and saying how long it was.
std::string printable(std::string_view text, size_t limit = 160);

/// What is at `path` when it is not a regular file ("a directory", "a FIFO", "a character
/// device", "a loop of symbolic links", "nothing" where no file is, ...), else "". Opens nothing: a
/// FIFO would block its opener until a writer comes.
std::string not_a_regular_file(const std::string& path);

/// Fails (InputError) unless `path` is a regular file, before anything opens it: "PATH: no
/// such NOUN", or "PATH: expected a NOUN, found a FIFO" (`noun`: "model file", ...), the
/// path made printable.
void check_readable_file(const std::string& path, const std::string& noun);

/// Fails early (InputError naming `flag`) when `path` cannot be created: its folder
/// is missing or not writable, or it names a directory, a FIFO or a device. Touches nothing.
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
