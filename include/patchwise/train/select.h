#pragma once
// Tile selection (Iterative Patch Selection, Bergner et al. 2023, in one pass): a pass
// without gradients in evaluation mode scores every tile of each bag, in chunks, and
// only the `keep` best of each bag go on to the pass with gradients. Scores: the
// attention weight for the learned rules, the tile's top class probability for the
// fixed ones. Memory for the scoring pass is the chunk's activations plus N feature
// vectors; for the training pass, keep tiles per bag: neither grows with the bag.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "patchwise/model/patch_classifier.h"

namespace patchwise {

struct Selection {
  at::Tensor tiles;             ///< the kept tiles, each bag's in their original order
  std::vector<int64_t> counts;  ///< min(keep, counts[b])
  at::Tensor rows;              ///< int64 [sum counts]: their rows in the input
};

/// The `keep` (>= 1) best tiles of each bag of `tiles` (bags as in forward_bags). A bag
/// of at most `keep` tiles is kept whole; when every bag is, the input is returned as is.
Selection select_tiles(
    PatchClassifier& model, const at::Tensor& tiles, const std::vector<int64_t>& counts,
    int64_t keep);

}  // namespace patchwise
