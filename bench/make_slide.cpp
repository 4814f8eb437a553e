// make_slide: a synthetic whole-slide image of any size, for the tiling benchmarks:
// white background with stained "tissue" (Perlin-noise blobs covering about 40 % of
// the area, pink with texture), written as a pyramidal tiled TIFF with JPEG tiles at
// quality 90, tiles of 256, as scanners write them. libvips computes it in strips, so
// a 40,000 x 40,000 slide never sits in memory.
//
//   build/bench/make_slide OUT.tif SIDE [SEED]

#include <vips/vips.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

int fail(const char* what) {
  std::fprintf(stderr, "make_slide: %s: %s\n", what, vips_error_buffer());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: make_slide OUT.tif SIDE [SEED]\n");
    return 2;
  }
  const int side = std::atoi(argv[2]);
  const int seed = argc > 3 ? std::atoi(argv[3]) : 1;
  if (side < 256) {
    std::fprintf(stderr, "make_slide: SIDE: '%s', expected at least 256\n", argv[2]);
    return 2;
  }
  if (VIPS_INIT(argv[0]) != 0) return fail("start");
  VipsObject* scope = VIPS_OBJECT(vips_image_new());
  VipsImage** t = reinterpret_cast<VipsImage**>(vips_object_local_array(scope, 12));
  const int cell = std::max(64, side / 6);
  // Blobs: smooth noise in [-1, 1] above 0.1.
  if (vips_perlin(&t[0], side, side, "cell_size", cell, "seed", seed, nullptr) ||
      vips_relational_const1(t[0], &t[1], VIPS_OPERATION_RELATIONAL_MORE, 0.1, nullptr))
    return fail("mask");
  // Texture: grainy noise, tinted pink-purple (eosin and haematoxylin).
  if (vips_gaussnoise(&t[2], side, side, "sigma", 25.0, "mean", 0.0, "seed", seed, nullptr))
    return fail("texture");
  double scale[3] = {1.0, 1.2, 0.9};
  double offset[3] = {205, 95, 170};
  if (vips_linear(t[2], &t[3], scale, offset, 3, nullptr) ||
      vips_cast_uchar(t[3], &t[4], nullptr) ||
      vips_copy(t[4], &t[5], "interpretation", VIPS_INTERPRETATION_sRGB, nullptr))
    return fail("tint");
  double white[3] = {245, 245, 245};
  t[7] = vips_image_new_from_image(t[5], white, 3);
  if (t[7] == nullptr || vips_ifthenelse(t[1], t[5], t[7], &t[6], nullptr)) return fail("compose");
  if (vips_tiffsave(
          t[6],
          argv[1],
          "tile",
          TRUE,
          "tile_width",
          256,
          "tile_height",
          256,
          "pyramid",
          TRUE,
          "compression",
          VIPS_FOREIGN_TIFF_COMPRESSION_JPEG,
          "Q",
          90,
          "bigtiff",
          side > 30000,
          nullptr))
    return fail(argv[1]);
  g_object_unref(scope);
  vips_shutdown();
  return 0;
}
