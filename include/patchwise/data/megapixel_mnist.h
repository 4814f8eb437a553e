#pragma once
// Megapixel MNIST (Katharopoulos & Fleuret, ICML 2019): large canvases on which a few
// handwritten digits decide the label, and scribbles of noise look like strokes.
//
// A canvas of side S (1500) is black. With noise, `scribbles` (50) patterns of 28x28,
// each two straight white lines between random points (anti-aliased, 2 pixels wide),
// go at random places. Then `digits` (5) MNIST digits of 28x28 go at random places
// where no two digits overlap: `same` (3) of them of the canvas's class (canvas i's is
// i mod the number of classes, so every class is equally frequent), and the others each of a class
// drawn uniformly from the other classes. A digit's pixels are combined with what lies under it by
// their maximum. The label is the majority class. Every draw comes from one generator seeded by
// (seed, index), so canvas i is the same whatever the count and the threads that made the others.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "patchwise/data/dataset.h"
#include "patchwise/data/region.h"

namespace patchwise {

struct MegapixelOptions {
  int64_t size = 1500;     ///< canvas side
  int64_t digits = 5;      ///< digits per canvas
  int64_t same = 3;        ///< of them, of the label's class (a strict majority)
  int64_t scribbles = 50;  ///< noise patterns; 0: none
  uint64_t seed = 0;
};

struct MegapixelCanvas {
  at::Tensor image;                    ///< uint8 [1,S,S]
  int64_t label = 0;                   ///< the majority class
  std::vector<Box> digit_boxes;        ///< where each digit lies, 28x28
  std::vector<int64_t> digit_classes;  ///< each digit's class
};

/// Throws InputError (option names) when the numbers cannot make a canvas: a side
/// below 56, `same` not a strict majority of `digits`, digits that cannot fit apart.
void check_megapixel_options(const MegapixelOptions& options);

/// Canvas `index` drawn from `digits` (uint8 [N,1,28,28], labels 0..9, every class
/// present). Throws InputError when a class has no digit.
MegapixelCanvas make_megapixel_canvas(
    const Dataset& digits, const MegapixelOptions& options, int64_t index);

/// `all` split into (train, test) stratified by class: `test` digits drawn first, then
/// `train` of the rest (the whole rest when it holds no more). InputError naming the
/// counts and `all.source` when they are not positive or do not fit.
std::pair<Dataset, Dataset> split_digits(
    const Dataset& all, int64_t train, int64_t test, uint64_t seed);

/// What write_megapixel_dataset writes, and how.
struct MegapixelDatasetOptions {
  MegapixelOptions canvas;  ///< the training canvases'; the test ones' take seed + 1
  int64_t train = 5000;     ///< training canvases
  int64_t test = 1000;      ///< test canvases
  int64_t threads = 0;      ///< drawing and writing threads; 0: one per core
  /// Called under a lock after each canvas: the split ("train", "test"), canvases
  /// written of it and their count.
  std::function<void(const std::string& split, int64_t done, int64_t count)> progress;
};

/// A Megapixel MNIST data set from the digits `all` (e.g. read_digits_json) in folder
/// `out`: an image folder of PNGs, out/<split>/<class>/<index>.png, and out/canvases.csv
/// with each canvas's label and its digits' classes and boxes. The digits are split as
/// `patchwise import mnist-json` splits them (4/5 train, seed 42), so that no test canvas
/// holds a training digit. InputError naming `out` when it cannot be written.
void write_megapixel_dataset(
    const Dataset& all, const std::string& out, const MegapixelDatasetOptions& options);

}  // namespace patchwise
