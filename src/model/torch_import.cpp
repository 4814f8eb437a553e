#include "patchwise/model/torch_import.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_map>

#include "little_endian.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/model/torch_export.h"

namespace patchwise {
namespace {

using detail::put_le;
using detail::read_le;

// ---------------------------------------------------------------------------------------
// Messages

/// Up to three names quoted, and how many more.
std::string listed(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 3; ++i) {
    out += (i > 0 ? ", '" : "'") + printable(names[i]) + "'";
  }
  return names.size() > 3 ? fmt::format("{} and {} more", out, names.size() - 3) : out;
}

// ---------------------------------------------------------------------------------------
// The zip archive

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndRecord = 0x06054b50;
constexpr size_t kLocalSize = 30;
constexpr size_t kCentralSize = 46;
constexpr size_t kEndSize = 22;

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

// ---------------------------------------------------------------------------------------
// Pickled values

constexpr size_t kMaxStack = 1 << 16;       ///< values on the stack at once
constexpr size_t kMaxValues = 1 << 20;      ///< values made in all (each costs ~100 bytes)
constexpr size_t kMaxMemo = 1 << 20;        ///< memo entries
constexpr size_t kMaxTextBytes = 64 << 20;  ///< strings, copies included
constexpr int kMaxDepth = 32;               ///< containers within containers
constexpr size_t kMaxDims = 32;             ///< a tensor's dimensions

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

const char* kind_name(Kind kind) {
  static const char* const names[] = {
      "None",
      "bool",
      "int",
      "float",
      "string",
      "tuple",
      "list",
      "dict",
      "global",
      "storage",
      "tensor"};
  return names[static_cast<int>(kind)];
}

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

Value make(Kind kind) {
  Value v;
  v.kind = kind;
  if (kind == Kind::kTuple || kind == Kind::kList || kind == Kind::kDict) {
    v.items = std::make_shared<Items>();
  }
  return v;
}

bool is_container(const Value& v) { return v.items != nullptr; }

struct StorageType {
  const char* name;
  at::ScalarType type;
};

constexpr StorageType kStorageTypes[] = {
    {"torch.FloatStorage", at::kFloat},
    {"torch.DoubleStorage", at::kDouble},
    {"torch.HalfStorage", at::kHalf},
    {"torch.BFloat16Storage", at::kBFloat16},
    {"torch.LongStorage", at::kLong},
    {"torch.IntStorage", at::kInt},
    {"torch.ShortStorage", at::kShort},
    {"torch.CharStorage", at::kChar},
    {"torch.ByteStorage", at::kByte},
    {"torch.BoolStorage", at::kBool}};

std::optional<at::ScalarType> storage_type(const std::string& global) {
  for (const StorageType& s : kStorageTypes) {
    if (global == s.name) return s.type;
  }
  return std::nullopt;
}

const char* const kCallables[] = {
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.jit._pickle.restore_type_tag"};  // LibTorch's pickle_save (export): the identity

// ---------------------------------------------------------------------------------------
// The restricted unpickler

/// Runs the opcodes of a state dict's pickle, and no code: only kCallables are called,
/// by this class itself, and storages come from the archive's records.
class Unpickler {
 public:
  Unpickler(std::string_view pickle, const Archive& archive) : in_(pickle), archive_(archive) {}

  /// The pickled value (at STOP).
  Value load();

 private:
  template <typename... Args>
  void check(bool condition, fmt::format_string<Args...> format, Args&&... args) const {
    if (!condition) {
      throw InputError(archive_.path + ": " + fmt::format(format, std::forward<Args>(args)...));
    }
  }

  std::string_view take(uint64_t n);
  uint64_t take_le(size_t width) { return read_le(take(width), 0, width); }
  std::string take_line();

  void push(Value v);
  void count_text(const Value& v);
  Value pop();
  Value& top();
  std::vector<Value> pop_to_mark();
  void adopt(Items& parent, Value child);
  Items& mutable_items(Value& target, Kind kind, const char* op);
  Value tuple(std::vector<Value> values);

  bool constant(uint8_t op);
  bool text(uint8_t op);
  bool memo(uint8_t op);
  bool collection(uint8_t op);
  bool call(uint8_t op);

  Value global(const std::string& module, const std::string& name);
  Value reduce(const Value& callable, const Value& args);
  Value storage(const Value& pid);
  Value rebuild_tensor(const std::vector<Value>& args);
  int64_t integer(const Value& v, const char* what) const;
  std::vector<int64_t> integers(const Value& v, const char* what) const;

  std::string_view in_;
  size_t at_ = 0;
  const Archive& archive_;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  std::map<std::string, Value> storages_;
  size_t made_ = 0;
  size_t text_bytes_ = 0;
};

std::string_view Unpickler::take(uint64_t n) {
  check(
      n <= in_.size() - at_,
      "the pickle ends early ({} bytes wanted at byte {} of {}), expected it to end with STOP",
      n,
      at_,
      in_.size());
  const std::string_view bytes = in_.substr(at_, n);
  at_ += n;
  return bytes;
}

std::string Unpickler::take_line() {
  const size_t end = in_.find('\n', at_);
  check(end != std::string_view::npos, "the pickle ends inside a GLOBAL's name");
  std::string line(in_.substr(at_, end - at_));
  at_ = end + 1;
  return line;
}

void Unpickler::push(Value v) {
  check(stack_.size() < kMaxStack, "the pickle's stack exceeds {} values", kMaxStack);
  check(
      ++made_ <= kMaxValues, "the pickle makes over {} values, expected a state dict", kMaxValues);
  count_text(v);
  stack_.push_back(std::move(v));
}

/// Strings are copied with their values (BINGET, BINPUT): the copies are bounded too.
void Unpickler::count_text(const Value& v) {
  text_bytes_ += v.text.size();
  check(text_bytes_ <= kMaxTextBytes, "the pickle's strings exceed {} bytes", kMaxTextBytes);
}

Value Unpickler::pop() {
  check(
      !stack_.empty() && (marks_.empty() || stack_.size() > marks_.back()),
      "the pickle takes a value from an empty stack at byte {}",
      at_);
  Value v = std::move(stack_.back());
  stack_.pop_back();
  return v;
}

Value& Unpickler::top() {
  check(
      !stack_.empty() && (marks_.empty() || stack_.size() > marks_.back()),
      "the pickle uses an empty stack at byte {}",
      at_);
  return stack_.back();
}

std::vector<Value> Unpickler::pop_to_mark() {
  check(!marks_.empty(), "the pickle closes a MARK it never opened at byte {}", at_);
  const size_t mark = marks_.back();
  marks_.pop_back();
  std::vector<Value> values(
      std::make_move_iterator(stack_.begin() + mark), std::make_move_iterator(stack_.end()));
  stack_.resize(mark);
  return values;
}

/// Puts `child` into `parent`; a container child is frozen from then on, so that no
/// container can ever hold itself, and nesting stays shallow.
void Unpickler::adopt(Items& parent, Value child) {
  if (is_container(child)) {
    check(child.items.get() != &parent, "the pickle puts a container into itself at byte {}", at_);
    child.items->frozen = true;
    parent.depth = std::max(parent.depth, child.items->depth + 1);
    check(parent.depth <= kMaxDepth, "the pickle nests containers over {} deep", kMaxDepth);
  }
  parent.values.push_back(std::move(child));
}

Items& Unpickler::mutable_items(Value& target, Kind kind, const char* op) {
  check(
      target.kind == kind && !target.items->frozen,
      "{} on a {}{} at byte {}, expected a {} being built",
      op,
      is_container(target) && target.items->frozen ? "finished " : "",
      kind_name(target.kind),
      at_,
      kind_name(kind));
  return *target.items;
}

Value Unpickler::tuple(std::vector<Value> values) {
  Value t = make(Kind::kTuple);
  for (Value& v : values) adopt(*t.items, std::move(v));
  t.items->frozen = true;  // tuples never change
  return t;
}

Value Unpickler::load() {
  while (true) {
    const auto op = static_cast<uint8_t>(take(1)[0]);
    if (op == '.') break;  // STOP
    if (constant(op) || text(op) || memo(op) || collection(op) || call(op)) continue;
    check(
        false,
        "unsupported pickle opcode 0x{:02x} at byte {}, expected a state dict's",
        op,
        at_ - 1);
  }
  check(
      stack_.size() == 1 && marks_.empty(),
      "the pickle ends with {} values on its stack, expected 1",
      stack_.size());
  return pop();
}

bool Unpickler::constant(uint8_t op) {
  Value v;
  switch (op) {
    case 0x80:  // PROTO
      check(take_le(1) <= 5, "pickle protocol above 5");
      return true;
    case 0x95:  // FRAME: a length hint
      take_le(8);
      return true;
    case 'N':
      v = make(Kind::kNone);
      break;
    case 0x88:
    case 0x89:  // NEWTRUE, NEWFALSE
      v = make(Kind::kBool);
      v.number = op == 0x88;
      break;
    case 'K':
      v = make(Kind::kInt);
      v.number = int64_t(take_le(1));
      break;  // BININT1
    case 'M':
      v = make(Kind::kInt);
      v.number = int64_t(take_le(2));
      break;  // BININT2
    case 'J':
      v = make(Kind::kInt);
      v.number = int32_t(uint32_t(take_le(4)));
      break;      // BININT
    case 0x8a: {  // LONG1: a little-endian two's complement of n bytes
      const size_t n = take_le(1);
      check(n <= 8, "an integer of {} bytes in the pickle, expected at most 8", n);
      const uint64_t raw = take_le(n);
      v = make(Kind::kInt);
      v.number = n == 0 ? 0 : n == 8 ? int64_t(raw) : int64_t(raw << (64 - 8 * n)) >> (64 - 8 * n);
      break;
    }
    case 'G': {  // BINFLOAT, big-endian
      uint64_t bits = 0;
      for (char c : take(8)) bits = bits << 8 | uint8_t(c);
      v = make(Kind::kFloat);
      std::memcpy(&v.real, &bits, sizeof bits);
      break;
    }
    default:
      return false;
  }
  push(std::move(v));
  return true;
}

bool Unpickler::text(uint8_t op) {
  uint64_t size = 0;
  switch (op) {
    case 0x8c:
      size = take_le(1);
      break;  // SHORT_BINUNICODE
    case 'X':
      size = take_le(4);
      break;  // BINUNICODE
    case 0x8d:
      size = take_le(8);
      break;     // BINUNICODE8
    case 'c': {  // GLOBAL module\nname\n
      const std::string module = take_line();
      push(global(module, take_line()));
      return true;
    }
    case 0x93: {  // STACK_GLOBAL
      const Value name = pop();
      const Value module = pop();
      check(
          module.kind == Kind::kString && name.kind == Kind::kString,
          "STACK_GLOBAL of a {} and a {}, expected two strings",
          kind_name(module.kind),
          kind_name(name.kind));
      push(global(module.text, name.text));
      return true;
    }
    default:
      return false;
  }
  Value v = make(Kind::kString);
  v.text = std::string(take(size));
  push(std::move(v));
  return true;
}

bool Unpickler::memo(uint8_t op) {
  switch (op) {
    case 'q':
    case 'r':
    case 0x94: {  // BINPUT, LONG_BINPUT, MEMOIZE
      const uint64_t key = op == 'q' ? take_le(1) : op == 'r' ? take_le(4) : memo_.size();
      check(
          memo_.size() < kMaxMemo || memo_.count(key),
          "the pickle's memo exceeds {} values",
          kMaxMemo);
      count_text(top());
      memo_[key] = top();
      return true;
    }
    case 'h':
    case 'j': {  // BINGET, LONG_BINGET
      const uint64_t key = take_le(op == 'h' ? 1 : 4);
      auto it = memo_.find(key);
      check(it != memo_.end(), "the pickle gets memo entry {}, which it never put", key);
      push(it->second);
      return true;
    }
    default:
      return false;
  }
}

bool Unpickler::collection(uint8_t op) {
  switch (op) {
    case '}':
      push(make(Kind::kDict));
      return true;  // EMPTY_DICT
    case ']':
      push(make(Kind::kList));
      return true;  // EMPTY_LIST
    case ')':
      push(tuple({}));
      return true;  // EMPTY_TUPLE
    case '(':       // MARK
      check(marks_.size() < kMaxStack, "the pickle's marks exceed {}", kMaxStack);
      marks_.push_back(stack_.size());
      return true;
    case 't':
      push(tuple(pop_to_mark()));
      return true;  // TUPLE
    case 0x85:
    case 0x86:
    case 0x87: {  // TUPLE1, TUPLE2, TUPLE3
      std::vector<Value> values(op - 0x84);
      for (size_t i = values.size(); i-- > 0;) values[i] = pop();
      push(tuple(std::move(values)));
      return true;
    }
    case 'a':
    case 's': {  // APPEND, SETITEM
      std::vector<Value> values(op == 'a' ? 1 : 2);
      for (size_t i = values.size(); i-- > 0;) values[i] = pop();
      Items& items = mutable_items(
          top(), op == 'a' ? Kind::kList : Kind::kDict, op == 'a' ? "APPEND" : "SETITEM");
      for (Value& v : values) adopt(items, std::move(v));
      return true;
    }
    case 'e':
    case 'u': {  // APPENDS, SETITEMS
      std::vector<Value> values = pop_to_mark();
      check(op == 'e' || values.size() % 2 == 0, "SETITEMS of an odd number of values");
      Items& items = mutable_items(
          top(), op == 'e' ? Kind::kList : Kind::kDict, op == 'e' ? "APPENDS" : "SETITEMS");
      for (Value& v : values) adopt(items, std::move(v));
      return true;
    }
    default:
      return false;
  }
}

bool Unpickler::call(uint8_t op) {
  switch (op) {
    case 'R': {  // REDUCE
      const Value args = pop();
      const Value callable = pop();
      push(reduce(callable, args));
      return true;
    }
    case 'Q':  // BINPERSID
      push(storage(pop()));
      return true;
    case 'b': {  // BUILD: torch sets an OrderedDict's _metadata, which says nothing we need
      pop();
      Value& target = top();
      check(
          target.kind == Kind::kDict && target.items->ordered,
          "BUILD on a {}, expected an OrderedDict",
          kind_name(target.kind));
      return true;
    }
    default:
      return false;
  }
}

Value Unpickler::global(const std::string& module, const std::string& name) {
  Value v = make(Kind::kGlobal);
  v.text = module + "." + name;
  bool allowed = storage_type(v.text).has_value();
  for (const char* callable : kCallables) allowed = allowed || v.text == callable;
  check(
      allowed,
      "the pickle calls {}, expected only tensors (collections.OrderedDict, "
      "torch._utils._rebuild_tensor_v2, torch.*Storage)",
      printable(v.text));
  return v;
}

Value Unpickler::reduce(const Value& callable, const Value& args) {
  check(
      callable.kind == Kind::kGlobal && args.kind == Kind::kTuple,
      "REDUCE of a {} on a {}, expected a call",
      kind_name(callable.kind),
      kind_name(args.kind));
  const std::vector<Value>& a = args.items->values;
  const std::string& f = callable.text;
  if (f == "collections.OrderedDict") {
    check(a.empty(), "collections.OrderedDict called with {} arguments, expected none", a.size());
    Value dict = make(Kind::kDict);
    dict.items->ordered = true;
    return dict;
  }
  if (f == "torch._utils._rebuild_tensor_v2") return rebuild_tensor(a);
  if (f == "torch.jit._pickle.restore_type_tag") {
    check(a.size() == 2, "{} called with {} arguments, expected 2", f, a.size());
    return a[0];
  }
  const bool with_state = f == "torch._utils._rebuild_parameter_with_state";
  check(
      f == "torch._utils._rebuild_parameter" || with_state,
      "the pickle calls {}, which is not a function, expected a call to rebuild a tensor",
      f);
  check(
      a.size() == (with_state ? 4u : 3u) && !a.empty() && a[0].kind == Kind::kTensor,
      "{} called with {} arguments, expected a tensor and {} more",
      f,
      a.size(),
      with_state ? 3 : 2);
  return a[0];  // a parameter is its tensor here
}

int64_t Unpickler::integer(const Value& v, const char* what) const {
  check(v.kind == Kind::kInt, "a tensor's {} is a {}, expected an int", what, kind_name(v.kind));
  return v.number;
}

std::vector<int64_t> Unpickler::integers(const Value& v, const char* what) const {
  check(
      v.kind == Kind::kTuple && v.items->values.size() <= kMaxDims,
      "a tensor's {} is a {} of {} values, expected a tuple of at most {} ints",
      what,
      kind_name(v.kind),
      is_container(v) ? v.items->values.size() : 1,
      kMaxDims);
  std::vector<int64_t> out;
  for (const Value& item : v.items->values) out.push_back(integer(item, what));
  return out;
}

/// ('storage', torch.<Type>Storage, key, location, numel): the record's bytes as a 1-D
/// tensor of that type, copied out once per key.
Value Unpickler::storage(const Value& pid) {
  const std::vector<Value>* p = pid.kind == Kind::kTuple ? &pid.items->values : nullptr;
  const bool shaped = p && p->size() == 5 && (*p)[0].kind == Kind::kString &&
                      (*p)[0].text == "storage" && (*p)[1].kind == Kind::kGlobal &&
                      (*p)[2].kind == Kind::kString && (*p)[4].kind == Kind::kInt;
  check(shaped, "a persistent id that is not ('storage', type, key, location, size)");
  const std::optional<at::ScalarType> type = storage_type((*p)[1].text);
  check(type.has_value(), "a storage of type {}, expected a torch.*Storage", (*p)[1].text);
  const std::string& key = (*p)[2].text;
  auto it = storages_.find(key);
  if (it != storages_.end()) {
    check(
        it->second.tensor.scalar_type() == *type, "storage '{}' read as two types", printable(key));
    return it->second;
  }
  const std::string_view* record = archive_.find("data/" + key);
  check(
      record != nullptr,
      "no record '{}data/{}' for a storage",
      printable(archive_.prefix),
      printable(key));
  const int64_t numel = (*p)[4].number;
  const size_t item = c10::elementSize(*type);
  // torch.save writes a storage's bytes exactly: a record of another size holds another
  // type than the storage says (a FloatStorage's bytes re-tagged as HalfStorage).
  check(
      numel >= 0 && record->size() % item == 0 && uint64_t(numel) == record->size() / item,
      "storage '{}' of {} {} elements ({} bytes), but its record has {} bytes: the type does "
      "not match the data",
      printable(key),
      numel,
      c10::toString(*type),
      numel >= 0 ? uint64_t(numel) * item : 0,
      record->size());
  const bool boolean = *type == at::kBool;  // bytes other than 0 and 1 are not bools
  at::Tensor data = torch::empty({numel}, boolean ? at::kByte : *type);
  if (numel > 0) std::memcpy(data.data_ptr(), record->data(), numel * item);
  Value v = make(Kind::kStorage);
  v.text = key;
  v.tensor = boolean ? data.ne(0) : data;
  return storages_[key] = v;
}

/// _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]):
/// a copy of the view, after checking it lies within the storage.
Value Unpickler::rebuild_tensor(const std::vector<Value>& a) {
  check(
      (a.size() == 6 || a.size() == 7) && a[0].kind == Kind::kStorage,
      "_rebuild_tensor_v2 called with {} arguments, expected a storage and 5 or 6 more",
      a.size());
  const at::Tensor& storage = a[0].tensor;
  const int64_t offset = integer(a[1], "storage offset");
  const std::vector<int64_t> size = integers(a[2], "size");
  const std::vector<int64_t> stride = integers(a[3], "stride");
  check(
      size.size() == stride.size(),
      "a tensor of {} sizes and {} strides",
      size.size(),
      stride.size());
  int64_t numel = 1;
  int64_t last = offset;  // the last element the view reaches
  bool overflow = offset < 0;
  for (size_t d = 0; d < size.size(); ++d) {
    overflow =
        overflow || size[d] < 0 || stride[d] < 0 || __builtin_mul_overflow(numel, size[d], &numel);
    int64_t reach = 0;
    overflow =
        overflow || (size[d] > 0 && (__builtin_mul_overflow(size[d] - 1, stride[d], &reach) ||
                                     __builtin_add_overflow(last, reach, &last)));
  }
  const bool inside = !overflow && numel <= storage.numel() &&
                      (numel == 0 ? offset <= storage.numel() : last < storage.numel());
  check(
      inside,
      "a tensor of size [{}] and stride [{}] at offset {} of a storage of {} elements, expected "
      "within it",
      fmt::join(size, ", "),
      fmt::join(stride, ", "),
      offset,
      storage.numel());
  Value v = make(Kind::kTensor);
  v.tensor =
      storage.as_strided(size, stride, numel == 0 ? 0 : offset).clone(at::MemoryFormat::Contiguous);
  return v;
}

// ---------------------------------------------------------------------------------------
// The state dict

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

// ---------------------------------------------------------------------------------------
// Names: the file's onto the model's

/// How a file names its tensors (see import_torch_weights).
enum class Naming { kModel, kBackbone, kVgg };

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

Naming naming_of(const TensorMap& state) {
  bool vgg = false;
  for (const auto& entry : state) {
    if (starts_with(entry.first, "backbone.")) return Naming::kModel;
    vgg = vgg || starts_with(entry.first, "features.");
  }
  return vgg ? Naming::kVgg : Naming::kBackbone;
}

/// The layers of a Sequential at `prefix` ("features.", "backbone.conv."): index -> batch
/// norm (true) or convolution (false), told apart by running statistics or 1-D weights.
std::map<int64_t, bool> layer_kinds(const TensorMap& state, const std::string& prefix) {
  std::map<int64_t, bool> kinds;
  for (const auto& [name, tensor] : state) {
    if (!starts_with(name, prefix)) continue;
    const size_t dot = name.find('.', prefix.size());
    const std::string index = name.substr(prefix.size(), dot - prefix.size());
    if (dot == std::string::npos || index.empty() || index.size() > 9 ||
        index.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    const std::string field = name.substr(dot + 1);
    const bool norm = field == "running_mean" || field == "running_var" ||
                      field == "num_batches_tracked" || (field == "weight" && tensor.dim() == 1);
    kinds[std::stoll(index)] |= norm;
  }
  return kinds;
}

/// torchvision VGG's "features.<i>." -> our "backbone.conv.<j>.": the k-th convolution
/// onto the k-th, and likewise the batch norms.
std::map<std::string, std::string> vgg_layers(const TensorMap& state, const TensorMap& ours) {
  const std::string mine = "backbone.conv.";
  std::vector<int64_t> our_layers[2];
  for (const auto& [index, norm] : layer_kinds(ours, mine)) our_layers[norm].push_back(index);
  std::map<std::string, std::string> layers;
  size_t seen[2] = {0, 0};
  for (const auto& [index, norm] : layer_kinds(state, "features.")) {
    const size_t k = seen[norm]++;
    if (k < our_layers[norm].size()) {
      layers[fmt::format("features.{}.", index)] = fmt::format("{}{}.", mine, our_layers[norm][k]);
    }
  }
  return layers;
}

/// One tensor of the file and the model's it goes to.
struct Match {
  std::string file_name;
  std::string model_name;
};

/// The file's names mapped to the model's: matches, and the names nothing matched.
struct Mapping {
  std::vector<Match> matches;
  std::vector<std::string> unexpected;
};

std::string model_name(
    const std::string& name, Naming naming, const std::map<std::string, std::string>& layers) {
  if (naming == Naming::kModel) return name;
  if (naming == Naming::kVgg && starts_with(name, "features.")) {
    const size_t dot = name.find('.', 9);
    auto it = dot == std::string::npos ? layers.end() : layers.find(name.substr(0, dot + 1));
    return it == layers.end() ? name : it->second + name.substr(dot + 1);
  }
  return "backbone." + name;
}

/// "fc.*" or "classifier.*" (after "backbone."): a classifier keep_head leaves out.
bool names_classifier(const std::string& name) {
  const std::string own = starts_with(name, "backbone.") ? name.substr(9) : name;
  return starts_with(own, "fc.") || starts_with(own, "classifier.");
}

bool is_step_count(const std::string& name) {
  const std::string suffix = "num_batches_tracked";
  return name.size() >= suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Mapping map_names(
    const TensorMap& state, const TensorMap& ours, const std::set<std::string>& head,
    bool keep_head) {
  const Naming naming = naming_of(state);
  const std::map<std::string, std::string> layers =
      naming == Naming::kVgg ? vgg_layers(state, ours) : std::map<std::string, std::string>{};
  Mapping mapping;
  for (const auto& entry : state) {
    const std::string& name = entry.first;
    const std::string target = model_name(name, naming, layers);
    if (keep_head && (head.count(target) > 0 || names_classifier(name))) continue;
    if (ours.count(target) > 0) {
      mapping.matches.push_back({name, target});
    } else if (!is_step_count(name)) {
      mapping.unexpected.push_back(name);
    }
  }
  return mapping;
}

/// The model's tensors a file must hold: all (the model's names), or the backbone's;
/// without the classifier's for keep_head; num_batches_tracked never.
std::vector<std::string> missing_names(
    const Mapping& mapping, const TensorMap& ours, const std::set<std::string>& head,
    bool keep_head, bool whole_model) {
  std::set<std::string> found;
  for (const Match& m : mapping.matches) found.insert(m.model_name);
  std::vector<std::string> missing;
  for (const auto& entry : ours) {
    const std::string& name = entry.first;
    const bool wanted = (whole_model || starts_with(name, "backbone.")) &&
                        !(keep_head && head.count(name) > 0) && !is_step_count(name);
    if (wanted && found.count(name) == 0) missing.push_back(name);
  }
  return missing;
}

std::string shape(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

/// `from` fits `to`: the same shape, and floating point for floating point (any width),
/// integers for integers.
void check_fits(
    const Match& m, const at::Tensor& from, const at::Tensor& to, const std::string& path) {
  const std::string name =
      m.file_name == m.model_name
          ? fmt::format("'{}'", printable(m.file_name))
          : fmt::format("'{}' (the model's '{}')", printable(m.file_name), m.model_name);
  check_input(
      from.sizes() == to.sizes(),
      "{}: {} has shape {}, expected {}",
      path,
      name,
      shape(from),
      shape(to));
  check_input(
      from.is_floating_point() == to.is_floating_point() && from.scalar_type() != at::kBool,
      "{}: {} holds {} values, expected {}",
      path,
      name,
      c10::toString(from.scalar_type()),
      c10::toString(to.scalar_type()));
}

/// The names of the parameters that depend on the classes
/// (PatchClassifierImpl::class_head_parameters).
std::set<std::string> head_names(PatchClassifier& model, const TensorMap& ours) {
  std::set<std::string> head;
  for (const at::Tensor& p : model->class_head_parameters()) {
    for (const auto& [name, tensor] : ours) {
      if (tensor.unsafeGetTensorImpl() == p.unsafeGetTensorImpl()) head.insert(name);
    }
  }
  return head;
}

bool starts_like_zip(const std::string& path) {
  char magic[4] = {};
  std::ifstream in(path, std::ios::binary);
  in.read(magic, sizeof magic);
  return in.gcount() == 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0;
}

}  // namespace

TensorMap read_torch_state_dict(const std::string& path) {
  const std::string file = read_whole_file(path);
  const Archive archive = open_archive(file, path);
  const std::string_view* pickle = archive.find("data.pkl");
  Unpickler unpickler(*pickle, archive);
  return to_state_dict(unpickler.load(), path);
}

void import_torch_weights(
    PatchClassifier& model, const TensorMap& state, const std::string& path, bool keep_head) {
  const auto named = named_state(model);
  const TensorMap ours(named.begin(), named.end());
  const std::set<std::string> head = head_names(model, ours);
  const Mapping mapping = map_names(state, ours, head, keep_head);
  check_input(
      mapping.unexpected.empty(),
      "{}: {} tensors unknown to this model: {}; expected the model's names, the backbone's "
      "or torchvision VGG's{}",
      path,
      mapping.unexpected.size(),
      listed(mapping.unexpected),
      keep_head ? "" : " (a classifier of another size: train --init-new-head)");
  const bool whole_model = naming_of(state) == Naming::kModel;
  const std::vector<std::string> missing =
      missing_names(mapping, ours, head, keep_head, whole_model);
  check_input(
      missing.empty(),
      "{}: {} of the model's tensors missing: {}; expected every {}{}",
      path,
      missing.size(),
      listed(missing),
      whole_model ? "parameter and buffer of the model" : "parameter and buffer of the backbone",
      keep_head ? " but the classifier's" : "");
  for (const Match& m : mapping.matches) {
    const at::Tensor& source = state.at(m.file_name);
    check_fits(m, source, ours.at(m.model_name), path);
    check_input(
        !source.is_floating_point() || torch::isfinite(source).all().item<bool>(),
        "{}: tensor '{}' holds values that are not finite (NaN or infinite), expected numbers",
        path,
        printable(m.file_name));
  }
  torch::NoGradGuard no_grad;
  for (const Match& m : mapping.matches) {
    at::Tensor target = ours.at(m.model_name);
    target.copy_(state.at(m.file_name));
  }
}

void load_initial_weights(PatchClassifier& model, const std::string& path, bool keep_head) {
  check_readable_file(path, "weights file (a patchwise model or torch.save's zip)");
  if (starts_like_zip(path)) {
    import_torch_weights(model, read_torch_state_dict(path), path, keep_head);
  } else if (!keep_head) {
    load_model_weights(model, path);
  } else {
    ModelFile file = load_model_file(path);
    const auto named = named_state(file.model);
    import_torch_weights(model, TensorMap(named.begin(), named.end()), path, keep_head);
  }
}

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
