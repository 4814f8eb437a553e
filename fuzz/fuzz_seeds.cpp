// Writes the fuzzers' seed corpora: small valid files of every kind, one folder per
// target (idx, cifar, digits_json, image, model_file, region, manifest) under the folder given.
//
//   fuzz_seeds OUT_DIR
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "patchwise/core/model_file.h"
#include "patchwise/data/idx.h"
#include "patchwise/data/image.h"
#include "patchwise/data/region.h"

namespace fs = std::filesystem;
using namespace patchwise;

namespace {

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void gzip_copy(const fs::path& from, const fs::path& to) {
  const std::string bytes = slurp(from);
  gzFile out = gzopen(to.c_str(), "wb");
  gzwrite(out, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(out);
}

void write_seeds(const fs::path& root) {
  for (const char* target : {"idx", "cifar", "digits_json", "image", "model_file", "region", "manifest"}) {
    fs::create_directories(root / target);
  }
  torch::manual_seed(0);
  const at::Tensor images = torch::randint(0, 256, {3, 1, 6, 5}, torch::kUInt8);
  write_idx_images((root / "idx/images").string(), images);
  write_idx_labels((root / "idx/labels").string(), torch::tensor({0, 7, 9}, torch::kInt64));
  gzip_copy(root / "idx/images", root / "idx/images.gz");

  std::string cifar10, cifar100;
  for (int record = 0; record < 2; ++record) {
    cifar10 += char(record + 3);
    cifar100 += char(record + 1);
    cifar100 += char(record + 40);
    const std::string pixels(3 * 32 * 32, char(17 * (record + 1)));
    cifar10 += pixels;
    cifar100 += pixels;
  }
  std::ofstream(root / "cifar/cifar10.bin", std::ios::binary) << cifar10;
  std::ofstream(root / "cifar/cifar100.bin", std::ios::binary) << cifar100;

  std::string digit = "{\"data\":[0";
  for (int i = 1; i < 28 * 28; ++i) digit += i % 5 ? ",0" : ",0.25";
  std::ofstream(root / "digits_json/0.json") << digit << "]}";

  const at::Tensor gray = torch::randint(0, 256, {1, 8, 8}, torch::kUInt8);
  const at::Tensor rgb = torch::randint(0, 256, {3, 8, 8}, torch::kUInt8);
  write_image((root / "image/gray.png").string(), gray);
  write_image((root / "image/rgb.png").string(), rgb);
  write_image((root / "image/rgb.jpg").string(), rgb);
  write_image((root / "image/gray.bmp").string(), gray);

  // Small pyramidal TIFFs (deflate and JPEG tiles, one with a resolution) and plain images.
  const at::Tensor slide = torch::randint(0, 256, {3, 40, 56}, torch::kUInt8);
  write_pyramid_tiff((root / "region/deflate.tif").string(), slide, {16, 0.5, 0});
  write_pyramid_tiff((root / "region/jpeg.tif").string(), slide, {16, 0, 80});
  write_pyramid_tiff((root / "region/gray.tif").string(), slide.narrow(0, 0, 1).contiguous(),
                     {16, 0, 0});
  write_image((root / "region/rgb.png").string(), rgb);
  write_image((root / "region/rgb.jpg").string(), rgb);

  // Manifests naming the images manifest_fuzz places beside its input (a.png, b/c.jpg).
  std::ofstream(root / "manifest/split.csv")
      << "path,label,split\n# a comment\na.png,cat,train\n\"b/c.jpg\",\"d\"\"og\",test\n";
  std::ofstream(root / "manifest/plain.csv") << "a.png,1\r\nb/c.jpg , 2\r\n";

  ModelConfig config;
  config.class_names = {"a", "b"};
  config.backbone.num_classes = 2;
  config.normalization = {{0.5}, {0.25}};
  PatchClassifier model(config);
  save_model((root / "model_file/small.pw").string(), model, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds OUT_DIR\n");
    return 2;
  }
  try {
    write_seeds(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
