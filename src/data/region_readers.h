#pragma once
// The readers behind open_region_reader (src/data/region.cpp), each in its own file.
// An opener returns null when its library does not recognize the file, and throws
// InputError when it does but the file is broken.

#include <memory>
#include <string>

#include "patchwise/data/region.h"

namespace patchwise::detail {

std::unique_ptr<RegionReader> open_openslide(
    const std::string& path, const RegionReaderOptions& options);
std::unique_ptr<RegionReader> open_tiff(
    const std::string& path, const RegionReaderOptions& options);
std::unique_ptr<RegionReader> open_vips(
    const std::string& path, const RegionReaderOptions& options);

/// Refuses a TIFF (by its magic) whose pages declare more than 4 M tiles or strips, or
/// a tile or strip larger than the file: OpenSlide allocates what a tile's byte count
/// says before reading it (6 GB for a fuzzed 5 kB file). Other files pass.
void check_tiff_layout(const std::string& path);

/// Starts libvips once per process (quiet, no operation cache).
void ensure_vips();
/// libvips' last error as one line, and clears it.
std::string take_vips_error();

}  // namespace patchwise::detail
