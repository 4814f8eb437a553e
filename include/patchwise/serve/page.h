#pragma once
// The web page `patchwise serve` answers at "/": one self-contained HTML file (its
// script and style inline, nothing fetched from elsewhere) that uploads an image to
// /v1/predict and draws the answer: the patch grid or the top tiles over the image,
// each patch's probabilities as bars, the fused class and a heatmap.

#include <string>

namespace patchwise {

const std::string& serve_page();

}  // namespace patchwise
