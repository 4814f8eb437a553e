#pragma once
// The IDX format of MNIST and Fashion-MNIST, plain or gzip-compressed.
//
// Images file: int32 magic 2051, count N, rows H, cols W (big-endian), then N*H*W bytes.
// Labels file: int32 magic 2049, count N, then N bytes.
// Every header field is checked against the bytes actually present before the
// payload is trusted, so a file that declares terabytes allocates nothing.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "patchwise/data/dataset.h"

namespace patchwise {

constexpr int32_t kIdxImagesMagic = 2051;
constexpr int32_t kIdxLabelsMagic = 2049;

/// Reads an IDX images file into uint8 [N,1,H,W]. Throws InputError on a bad file.
at::Tensor read_idx_images(const std::string& path);

/// Reads an IDX labels file into int64 [N]. Throws InputError on a bad file.
at::Tensor read_idx_labels(const std::string& path);

/// Finds `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]`
/// in `dir` (prefix "train" or "t10k") and reads them into a Dataset of at most
/// `limit` items (all when limit <= 0). Class names come from `dir/classes.txt`
/// (one per line) when present, Fashion-MNIST's when the path names it, else "0".."9".
Dataset load_idx_split(const std::string& dir, const std::string& prefix, int64_t limit = 0);

/// Writes uint8 [N,1,H,W] images / int64 [N] labels as plain IDX files.
void write_idx_images(const std::string& path, const at::Tensor& images);
void write_idx_labels(const std::string& path, const at::Tensor& labels);

}  // namespace patchwise
