// Writes the fuzzers' seed corpora: small valid files of every kind, one folder per
// target (idx, cifar, digits_json, image, model_file, region, manifest, request,
// torch_import) under the folder given.
//
//   fuzz_seeds OUT_DIR
#include <torch/torch.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "patchwise/data/idx.h"
#include "patchwise/data/image.h"
#include "patchwise/data/region.h"
#include "patchwise/model/model_file.h"
#include "patchwise/model/torch_export.h"
#include "patchwise/model/torch_import.h"

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

/// Requests to patchwise serve: an image raw and in a form, chunked, probes, refusals,
/// pipelined requests and framing that smuggles requests behind a body.
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
  // Framing that must close the connection after its answer, with requests behind it.
  const std::string behind = "GET /v1/model HTTP/1.1\r\nHost: x\r\n\r\n";
  std::ofstream(dir / "smuggle") << "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                                 << behind;
  std::ofstream(dir / "chunk-oversized") << "POST /v1/predict HTTP/1.1\r\nHost: x\r\n"
                                            "Transfer-Encoding: chunked\r\n\r\nfffffff\r\n"
                                         << behind << behind;
  std::ofstream(dir / "chunked-pipelined")
      << "POST /nowhere HTTP/1.1\r\nHost: x\r\n"
         "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
      << behind;
}

std::string le(uint64_t value, size_t width) {
  std::string out;
  for (size_t i = 0; i < width; ++i) out.push_back(char(uint8_t(value >> (8 * i))));
  return out;
}

/// Protocol 2, as torch.save writes a state dict: an OrderedDict of a strided float view
/// (storage '0', 16 elements) and a long scalar (storage '1'), memo puts and gets, and the
/// _metadata BUILD.
std::string state_dict_pickle_v2() {
  const auto text = [](const std::string& s) { return "X" + le(s.size(), 4) + s; };
  const std::string rebuild = std::string("ctorch._utils\n_rebuild_tensor_v2\nq") + '\2';
  const auto storage = [&](const char* type, const char* key, int numel) {
    return "((" + text("storage") + "ctorch\n" + type + "\n" + text(key) + text("cpu") + "K" +
           char(numel) + "tQ";
  };
  std::string p = "\x80\x02\x63\x63ollections\nOrderedDict\nq" + std::string(1, '\0') + ")Rq\x01(";
  p += text("conv.weight") + rebuild + storage("FloatStorage", "0", 16);
  p += "K\x01K\x02K\x03\x86K\x01K\x02\x86\x89h" + std::string(1, '\0') + ")RtR";
  p += text("bn.num_batches_tracked") + "h\x02" + storage("LongStorage", "1", 1);
  p += "K" + std::string(1, '\0') + "))\x89h" + std::string(1, '\0') + ")RtRu";
  p += "}" + text("_metadata") + "h" + std::string(1, '\0') + ")R(" + text("") + "}" +
       text("version") + "K\x01susb.";
  return p;
}

/// Protocol 4: a frame, short strings, STACK_GLOBAL and MEMOIZE.
std::string state_dict_pickle_v4() {
  const auto text = [](const std::string& s) {
    return "\x8c" + std::string(1, char(s.size())) + s;
  };
  std::string body = "}\x94" + text("w") + "\x94" + text("torch._utils") +
                     text("_rebuild_tensor_v2") + "\x93\x94((" + text("storage") + text("torch") +
                     text("FloatStorage") + "\x93" + text("2") + text("cpu") + "K\x04tQK" +
                     std::string(1, '\0') + "K\x04\x85K\x01\x85\x89)tRs.";
  return "\x80\x04\x95" + le(body.size(), 8) + body;
}

/// Seeds for torch_import_fuzz: whole archives, and bare pickles it wraps into one.
void write_torch_import_seeds(const fs::path& dir, PatchClassifier& model) {
  std::ofstream(dir / "v2.pkl", std::ios::binary) << state_dict_pickle_v2();
  std::ofstream(dir / "v4.pkl", std::ios::binary) << state_dict_pickle_v4();
  std::vector<std::pair<std::string, std::string>> entries = {
      {"seed/data.pkl", state_dict_pickle_v2()}, {"seed/byteorder", "little"}};
  for (int i = 0; i < 2; ++i)
    entries.emplace_back("seed/data/" + std::to_string(i), std::string(64, '\1'));
  std::ofstream(dir / "archive.pt", std::ios::binary) << stored_zip(entries);
  const std::vector<char> exported = state_dict_bytes(model);
  std::ofstream(dir / "export.pt", std::ios::binary).write(exported.data(), exported.size());
}

void write_seeds(const fs::path& root) {
  for (const char* target :
       {"idx",
        "cifar",
        "digits_json",
        "image",
        "model_file",
        "region",
        "manifest",
        "request",
        "torch_import"}) {
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
  write_torch_import_seeds(root / "torch_import", model);
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
