#pragma once
// One entry point for every data format: `--data PATH` is recognized by its content.
//
//   IDX        PATH/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (MNIST, Fashion-MNIST)
//   CIFAR-10   PATH/data_batch_{1..5}.bin, PATH/test_batch.bin
//   CIFAR-100  PATH/train.bin, PATH/test.bin                (--label fine|coarse)
//   manifest   PATH.csv of path,label[,split]                 (data/manifest.h)
//   folders    PATH/train/<class>/*, PATH/test/<class>/*   (or PATH/<class>/* alone:
//              one set, split with --val-split)
// One table of formats (src/data/source.cpp) recognizes and loads them, in this order.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "patchwise/data/cifar.h"
#include "patchwise/data/dataset.h"
#include "patchwise/data/image_folder.h"

namespace patchwise {

struct DataOptions {
  int64_t limit = 0;  ///< first N items; 0: all
  CifarLabel cifar_label = CifarLabel::kFine;
  ImageFolderOptions folder;
  /// A data set with more classes is refused: evaluation keeps a K x K confusion matrix,
  /// and a label column of free text (one class per line) would grow it quadratically.
  int64_t max_classes = 1000;
};

/// split: "train" or "test" ("t10k" is accepted for "test"). Throws InputError when
/// PATH is none of the formats above or lacks the split. For a folder of classes
/// without train/ and test/, or a manifest without a split column, both splits return
/// the whole set.
/// `skipped` receives the image-folder files that could not be decoded.
Dataset load_data(
    const std::string& path, const std::string& split, const DataOptions& options,
    std::vector<std::string>* skipped = nullptr);

/// Whether PATH holds separate train and test sets.
bool has_test_split(const std::string& path);

/// A stratified split: from every class, round(fraction * its count) items go to the
/// second set, chosen by `seed`; both sets keep the original order otherwise.
std::pair<Dataset, Dataset> stratified_split(const Dataset& data, double fraction, uint64_t seed);

/// Maps `data`'s labels onto `class_names` by name when every one of its classes is
/// found there (an image folder sorted differently from the model's classes);
/// returns false and leaves `data` alone when some name is not found.
bool align_class_names(Dataset& data, const std::vector<std::string>& class_names);

/// The first of `data`'s class names that `class_names` lacks, compared as
/// align_class_names compares them; "" when every one is there.
std::string first_unknown_class_name(
    const Dataset& data, const std::vector<std::string>& class_names);

}  // namespace patchwise
