#pragma once
// Errors a user can cause. An InputError means the input (a file, a flag, a
// value) was wrong: the CLI prints its one-line message and exits with 2.
// Anything else thrown is an internal failure: exit 1.

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace patchwise {

/// Bad input from the user: a file, a flag or a value. The message is one line
/// that names what was wrong, the value and what was expected.
class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& message) : std::runtime_error(message) {}
};

/// Throws an InputError built with fmt when `condition` is false.
template <typename... Args>
void check_input(bool condition, fmt::format_string<Args...> format, Args&&... args) {
  if (!condition) {
    throw InputError(fmt::format(format, std::forward<Args>(args)...));
  }
}

}  // namespace patchwise
