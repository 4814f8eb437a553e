// The state-dict layer of reading torch.save's files (torch_import.h): the unpickled
// value as named tensors.

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/model/torch_import.h"
#include "torch_pickle.h"
#include "torch_zip.h"

namespace patchwise {
namespace {

using detail::Kind;
using detail::kind_name;
using detail::Value;

/// The dict under `key` in `dict`, if any.
const Value* entry(const Value& dict, const std::string& key) {
  const std::vector<Value>& kv = dict.items->values;
  for (size_t i = 0; i + 1 < kv.size(); i += 2) {
    if (kv[i].kind == Kind::kString && kv[i].text == key && kv[i + 1].kind == Kind::kDict)
      return &kv[i + 1];
  }
  return nullptr;
}

TensorMap to_state_dict(const Value& root, const std::string& path) {
  check_input(
      root.kind == Kind::kDict,
      "{}: the pickle holds a {}, expected a state dict",
      path,
      kind_name(root.kind));
  const Value* dict = &root;
  for (const char* wrapper : {"state_dict", "model"}) {
    if (const Value* inner = entry(root, wrapper)) {
      dict = inner;
      break;
    }
  }
  TensorMap state;
  const std::vector<Value>& kv = dict->items->values;
  for (size_t i = 0; i < kv.size(); i += 2) {
    check_input(
        kv[i].kind == Kind::kString,
        "{}: a state dict key is a {}, expected a string",
        path,
        kind_name(kv[i].kind));
    const std::string& name = kv[i].text;
    check_input(
        kv[i + 1].kind == Kind::kTensor,
        "{}: '{}' holds a {}, expected a tensor",
        path,
        printable(name),
        kind_name(kv[i + 1].kind));
    check_input(
        state.emplace(name, kv[i + 1].tensor).second,
        "{}: '{}' appears twice",
        path,
        printable(name));
  }
  return state;
}

std::string read_whole_file(const std::string& path) {
  namespace fs = std::filesystem;
  check_readable_file(path, "file written by torch.save");
  std::ifstream in(path, std::ios::binary);
  check_input(in.good(), "{}: cannot open for reading", path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

TensorMap read_torch_state_dict(const std::string& path) {
  const std::string file = read_whole_file(path);
  const detail::Archive archive = detail::open_archive(file, path);
  return to_state_dict(detail::unpickle(*archive.find("data.pkl"), archive), path);
}

}  // namespace patchwise
