#pragma once
// JSON as text where the values may hold bytes from outside (paths, upload names, labels,
// request lines): invalid UTF-8 becomes U+FFFD instead of nlohmann's type_error 316, which
// would end a request's answer, a model's save or the process.

#include <nlohmann/json.hpp>
#include <string>

namespace patchwise {

inline std::string json_text(const nlohmann::json& value, int indent = -1) {
  return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace patchwise
