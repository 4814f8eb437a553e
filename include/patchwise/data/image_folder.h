#pragma once
// Image folders in torchvision's ImageFolder convention: root/<class>/<file>, classes
// taken from the folder names, sorted; labels in that order.

#include <cstdint>
#include <string>
#include <vector>

#include "patchwise/data/dataset.h"

namespace patchwise {

struct ImageFolderOptions {
  int64_t channels = 0;  ///< 1, 3, or 0: 1 when every image is grayscale, else 3
  int64_t height = 0;    ///< > 0: resize every image to height x width
  int64_t width = 0;
  bool strict = false;  ///< an undecodable file is fatal instead of skipped
  /// Bytes of decoded images a set may hold in memory; a larger one stays in its files,
  /// which are decoded when a batch needs them. 0: no limit.
  int64_t memory_limit = int64_t{2} << 30;
  /// Keep the files unread: no pixels, no headers, any sizes (height and width 0). For
  /// sets of large images whose tiles are read image by image (patch/bags.h).
  bool list_only = false;
};

/// A data set before its pixels are read: image files, their labels and the class names.
/// Image folders and CSV manifests (data/manifest.h) are listed into one, then packed.
struct SampleList {
  std::vector<std::string> files;
  std::vector<int64_t> labels;  ///< indices into class_names
  std::vector<std::string> class_names;
  std::string source;  ///< where it was listed from, for messages
};

/// Whether `dir` has at least one sub-folder (a class).
bool is_image_folder(const std::string& dir);

/// The files of root/<class>/, classes sorted by name. Throws InputError on an empty
/// class folder or no classes.
SampleList list_image_folder(const std::string& root);

/// Reads every listed image into one uint8 [N,C,H,W] tensor, or, when they would take
/// more than options.memory_limit bytes, reads only the files' headers and leaves the
/// pixels in the files (Dataset::in_memory() false). Undecodable files are skipped and
/// listed in `skipped` (or fatal with options.strict). Throws InputError when no image
/// is readable or the images have different sizes without a target size (the message
/// lists the sizes found).
Dataset pack_images(
    const SampleList& samples, const ImageFolderOptions& options,
    std::vector<std::string>* skipped = nullptr);

/// Reads every file under root/<class>/. Undecodable files are skipped and listed in
/// `skipped` (or fatal with options.strict). Throws InputError on an empty class
/// folder, no classes, or images of different sizes without a target size (the
/// message lists the sizes found).
Dataset load_image_folder(
    const std::string& root, const ImageFolderOptions& options,
    std::vector<std::string>* skipped = nullptr);

}  // namespace patchwise
