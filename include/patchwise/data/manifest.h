#pragma once
// CSV manifests, as whole-slide tools keep their data sets: one image a line,
//
//   path,label[,split]
//
// path relative to the manifest's folder (or absolute), label a class name, split
// "train" or "test" (a manifest without the column is one set, split with
// --val-split). An optional header line naming the columns is skipped; blank lines
// and lines starting with '#' are ignored; fields may be quoted ("a, b" with ""
// for a quote). Classes are the sorted distinct labels of the whole manifest, so
// its splits agree. Every error names the manifest, the line, the value and what
// was expected.

#include <string>

#include "patchwise/data/image_folder.h"

namespace patchwise {

/// Whether `path` names a manifest: a regular file ending in .csv.
bool is_manifest(const std::string& path);

/// The images of `split` ("train" or "test"; every line when the manifest has no split
/// column). Throws InputError for a malformed line, a bad split, a missing image file,
/// or a split without images.
SampleList read_manifest(const std::string& path, const std::string& split);

/// Whether the manifest has test lines.
bool manifest_has_test(const std::string& path);

}  // namespace patchwise
