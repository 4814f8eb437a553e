#include "torch_pickle.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <cstring>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>

#include "little_endian.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"

namespace patchwise::detail {

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

namespace {

constexpr size_t kMaxStack = 1 << 16;       ///< values on the stack at once
constexpr size_t kMaxValues = 1 << 20;      ///< values made in all (each costs ~100 bytes)
constexpr size_t kMaxMemo = 1 << 20;        ///< memo entries
constexpr size_t kMaxTextBytes = 64 << 20;  ///< strings, copies included
constexpr int kMaxDepth = 32;               ///< containers within containers
constexpr size_t kMaxDims = 32;             ///< a tensor's dimensions

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

}  // namespace

Value unpickle(std::string_view pickle, const Archive& archive) {
  return Unpickler(pickle, archive).load();
}

}  // namespace patchwise::detail
