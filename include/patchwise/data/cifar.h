#pragma once
// CIFAR binary batches.
//
// CIFAR-10 : data_batch_1.bin ... data_batch_5.bin (train), test_batch.bin (test);
//            records of 1 label byte + 3072 pixel bytes (channel-planar 32x32 R, G, B);
//            class names from batches.meta.txt when present.
// CIFAR-100: train.bin, test.bin; records of 2 label bytes (coarse, fine) + 3072 pixel
//            bytes; names from coarse_label_names.txt / fine_label_names.txt when present.
// A file whose size is not a multiple of the record size, or a label outside the
// data set's classes, is refused with the file and the offending value.

#include <string>

#include "patchwise/data/dataset.h"

namespace patchwise {

constexpr int64_t kCifarSide = 32;
constexpr int64_t kCifarPixels = 3 * kCifarSide * kCifarSide;

/// Which CIFAR-100 label to use.
enum class CifarLabel { kFine, kCoarse };

/// Reads one CIFAR binary file: `label_bytes` (1 or 2) label bytes per record, the
/// label taken from byte `label_index`; labels must be < `num_classes`.
Dataset read_cifar_file(
    const std::string& path, int64_t label_bytes, int64_t label_index, int64_t num_classes);

/// Whether `dir` holds CIFAR-10 (data_batch_1.bin) or CIFAR-100 (train.bin + test.bin) files.
bool is_cifar10_dir(const std::string& dir);
bool is_cifar100_dir(const std::string& dir);

/// split: "train" or "test". The first `limit` records (all when limit <= 0).
Dataset load_cifar10(const std::string& dir, const std::string& split, int64_t limit = 0);
Dataset load_cifar100(
    const std::string& dir, const std::string& split, CifarLabel label, int64_t limit = 0);

}  // namespace patchwise
