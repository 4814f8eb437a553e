#pragma once
// The pickle layer of reading torch.save's files (torch_import.h): a restricted
// unpickler. A pickle is a program; this runs none of it. It interprets the opcodes a
// state dict needs (protocols 2 to 4) and calls only the globals torch_import.h lists,
// itself; storages come from the archive's records, each checked against its size and
// type, and every count, depth and length is bounded before anything is allocated.

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "torch_zip.h"

namespace patchwise::detail {

enum class Kind {
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

const char* kind_name(Kind kind);

struct Items;

/// One pickled value: the fields its kind uses.
struct Value {
  Kind kind = Kind::kNone;
  int64_t number = 0;            ///< bool, int
  double real = 0;               ///< float
  std::string text;              ///< string; global ("module.name"); storage key
  std::shared_ptr<Items> items;  ///< tuple, list, dict
  at::Tensor tensor;             ///< storage (1-D, its type), tensor
};

/// A container's values; a dict's keys and values alternate.
struct Items {
  std::vector<Value> values;
  int depth = 1;
  bool frozen = false;   ///< held by another container: never changes again (no cycles)
  bool ordered = false;  ///< made by collections.OrderedDict
};

/// The value `pickle` holds (at its STOP), its storages read from `archive`: InputError
/// naming archive.path with one line otherwise.
Value unpickle(std::string_view pickle, const Archive& archive);

}  // namespace patchwise::detail
