#include "patchwise/data/manifest.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#include "patchwise/base/error.h"
#include "patchwise/base/files.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;

struct Line {
  int64_t number = 0;
  std::string path, label, split;
};

/// The fields of one CSV line (RFC 4180 quoting); throws on an unclosed quote.
std::vector<std::string> split_fields(const std::string& text, const std::string& where) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back() += c;
      }
    } else if (c == '"' && fields.back().empty()) {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else {
      fields.back() += c;
    }
  }
  check_input(!quoted, "{}: unclosed quote, expected path,label[,split]", where);
  return fields;
}

std::string trim(std::string s) {
  const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  while (!s.empty() && blank(s.back())) s.pop_back();
  size_t start = 0;
  while (start < s.size() && blank(s[start])) ++start;
  return s.substr(start);
}

/// Every data line of the manifest, checked for shape; the split column is "" when absent.
std::vector<Line> parse(const std::string& path) {
  check_input(
      is_manifest(path), "{}: expected a manifest, a .csv file of path,label[,split]", path);
  std::ifstream in(path, std::ios::binary);
  check_input(in.good(), "{}: cannot read the manifest", path);
  std::vector<Line> lines;
  size_t columns = 0;
  std::string text;
  for (int64_t number = 1; std::getline(in, text); ++number) {
    const std::string where = fmt::format("{}:{}", path, number);
    check_input(text.find('\0') == std::string::npos, "{}: a NUL byte, expected CSV text", where);
    // A UTF-8 byte-order mark, as Excel writes one, is not part of the first field.
    if (number == 1 && text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);
    const std::string t = trim(text);
    if (t.empty() || t[0] == '#') continue;
    std::vector<std::string> f = split_fields(t, where);
    for (std::string& v : f) v = trim(v);
    if (lines.empty() && columns == 0 && f[0] == "path" && f.size() >= 2 && f[1] == "label") {
      columns = f.size();  // the header
      check_input(
          columns <= 3 && (columns < 3 || f[2] == "split"),
          "{}: header '{}', expected path,label[,split]",
          where,
          t);
      continue;
    }
    if (columns == 0) columns = f.size();
    check_input(
        f.size() == columns && (columns == 2 || columns == 3),
        "{}: {} fields, expected {}",
        where,
        f.size(),
        columns == 3 ? "path,label,split like the lines above" : "path,label[,split]");
    check_input(!f[0].empty(), "{}: empty path, expected an image file", where);
    check_input(!f[1].empty(), "{}: empty label, expected a class name", where);
    const std::string split = columns == 3 ? f[2] : "";
    check_input(
        columns == 2 || split == "train" || split == "test",
        "{}: split '{}', expected train or test",
        where,
        split);
    lines.push_back({number, f[0], f[1], split});
  }
  check_input(!lines.empty(), "{}: no images listed, expected lines of path,label[,split]", path);
  return lines;
}

}  // namespace

bool is_manifest(const std::string& path) {
  std::error_code ec;
  return fs::path(path).extension() == ".csv" && fs::is_regular_file(path, ec);
}

bool manifest_has_test(const std::string& path) {
  const std::vector<Line> lines = parse(path);
  return std::any_of(lines.begin(), lines.end(), [](const Line& l) { return l.split == "test"; });
}

SampleList read_manifest(const std::string& path, const std::string& split) {
  const std::vector<Line> lines = parse(path);
  std::map<std::string, int64_t> classes;
  for (const Line& l : lines) classes.emplace(l.label, 0);
  SampleList list;
  list.source = path;
  for (auto& [name, index] : classes) {
    index = static_cast<int64_t>(list.class_names.size());
    list.class_names.push_back(name);
  }
  const fs::path folder = fs::path(path).parent_path();
  for (const Line& l : lines) {
    if (!l.split.empty() && l.split != split) continue;
    const fs::path file = fs::path(l.path).is_absolute() ? fs::path(l.path) : folder / l.path;
    const std::string found = not_a_regular_file(file.string());
    check_input(
        found.empty(),
        "{}:{}: '{}': {}",
        path,
        l.number,
        printable(l.path),
        found == "nothing" ? "no such file, expected an image file"
                           : "expected an image file, found " + found);
    list.files.push_back(file.string());
    list.labels.push_back(classes.at(l.label));
  }
  check_input(!list.files.empty(), "{}: no {} images listed", path, split);
  return list;
}

}  // namespace patchwise
