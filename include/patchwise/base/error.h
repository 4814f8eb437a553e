#pragma once
// Errors a user can cause. An InputError means the input (a file, a flag, a
// value) was wrong: the CLI prints its one-line message and exits with 2.
// Anything else thrown is an internal failure: exit 1.

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace patchwise {

/// Bad input from the user: a file, a flag or a value. The message is one line
/// that names what was wrong, the value and what was expected.
class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& message) : std::runtime_error(message) {}
};

/// A bad value of a named option (`option` is the library's name: "epochs", "backbone",
/// ...). The message reads "epochs: 0, expected at least 1". The library does not know
/// where a value came from: the CLI shows the flag that set it instead of the name, and
/// a model file's loader names the file.
class OptionError : public InputError {
 public:
  OptionError(const std::string& option, const std::string& detail)
      : InputError(option + ": " + detail), option_(option), detail_(detail) {}
  const std::string& option() const { return option_; }
  /// The message without the option's name.
  const std::string& detail() const { return detail_; }

 private:
  std::string option_;
  std::string detail_;
};

/// Throws an OptionError for `option` built with fmt when `condition` is false.
template <typename... Args>
void check_option(
    bool condition, const char* option, fmt::format_string<Args...> format, Args&&... args) {
  if (!condition) {
    throw OptionError(option, fmt::format(format, std::forward<Args>(args)...));
  }
}

/// Throws an InputError built with fmt when `condition` is false.
template <typename... Args>
void check_input(bool condition, fmt::format_string<Args...> format, Args&&... args) {
  if (!condition) {
    throw InputError(fmt::format(format, std::forward<Args>(args)...));
  }
}

}  // namespace patchwise
