#pragma once
// What this build of patchwise is and runs on: the first thing a bug report needs.

#include <string>

namespace patchwise {

/// patchwise's version (CMake's project version).
std::string patchwise_version();

/// Several lines: patchwise's version; LibTorch's version and what it was built with
/// (compiler, parallel backend, oneDNN, CUDA); the BLAS library actually loaded; the
/// processor, the vector instructions it has and the ones LibTorch's kernels use; and
/// the versions of the image, slide and HTTP libraries patchwise was built against.
std::string version_report();

}  // namespace patchwise
