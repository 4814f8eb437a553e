// Writes the fuzzers' seed corpora: small valid files of every kind, one folder per
// target (idx, cifar, digits_json, image, model_file, region, manifest, request) under the folder
// given.
//
//   fuzz_seeds OUT_DIR
#include <torch/torch.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
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

/// Requests to patchwise serve: an image raw and in a form, chunked, probes, refusals.
void write_request_seeds(const fs::path& dir, const std::string& png) {
  const auto post = [&](const std::string& type, const std::string& body) {
    return "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: " + type +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  };
  const std::string form =
      "--b\r\nContent-Disposition: form-data; name=\"image\"; "
      "filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n" +
      png + "\r\n--b--\r\n";
  std::ofstream(dir / "raw") << post("image/png", png);
  std::ofstream(dir / "form") << post("multipart/form-data; boundary=b", form);
  std::ofstream(dir / "chunked") << "POST /v1/predict HTTP/1.1\r\nHost: x\r\n"
                                    "Transfer-Encoding: chunked\r\nContent-Type: image/png\r\n\r\n"
                                 << std::hex << png.size() << "\r\n"
                                 << png << "\r\n0\r\n\r\n";
  std::ofstream(dir / "two") << "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                             << post("application/json", "{}");
  std::ofstream(dir / "model") << "GET /v1/model HTTP/1.1\r\nHost: x\r\n\r\n";
  std::ofstream(dir / "method") << "DELETE /v1/predict HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
}

void write_seeds(const fs::path& root) {
  for (const char* target :
       {"idx", "cifar", "digits_json", "image", "model_file", "region", "manifest", "request"}) {
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
  write_pyramid_tiff(
      (root / "region/gray.tif").string(), slide.narrow(0, 0, 1).contiguous(), {16, 0, 0});
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
  write_request_seeds(root / "request", encode_png(gray));
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
