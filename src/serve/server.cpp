#include "patchwise/serve/server.h"

#include <fmt/format.h>
#include <httplib.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "guarded_server.h"
#include "patchwise/base/error.h"
#include "patchwise/base/files.h"
#include "patchwise/base/json_text.h"
#include "patchwise/base/runtime.h"
#include "patchwise/data/image.h"
#include "patchwise/model/bag_options.h"
#include "patchwise/model/model_file.h"
#include "patchwise/report/prediction.h"
#include "patchwise/serve/metrics.h"
#include "patchwise/serve/page.h"

namespace patchwise {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

/// More headers than a browser or a client library sends: a flood is refused (431).
constexpr size_t kMaxHeaders = 100;
/// An oversized body is read on and dropped up to this many times max_upload before the
/// 413 and the connection's close, so that a client still sending reads its answer.
constexpr int64_t kDiscardFactor = 4;

/// A loaded model and what GET /v1/model says about it.
struct Loaded {
  PatchClassifier model{nullptr};
  nlohmann::json info;
};

std::shared_ptr<Loaded> load(const std::string& path, c10::Device device, Precision precision) {
  ModelFile file = load_model_file(path);
  auto loaded = std::make_shared<Loaded>();
  loaded->model = file.model;
  loaded->model->to(device);
  loaded->model->eval();
  loaded->model->set_precision(precision);
  const ModelConfig& config = loaded->model->config();
  loaded->info = {
      {"file", path},
      {"classes", config.class_names},
      {"tiled", config.tiled},
      {"config", model_config_to_json(config)},
      {"training", file.training}};
  if (!config.tiled) loaded->info["patch_grid"] = loaded->model->grid().describe();
  return loaded;
}

/// One request on its way through the batcher.
struct Job {
  std::shared_ptr<Loaded> loaded;  ///< the model it was decoded for
  std::string name;                ///< the upload's file name, or "upload"
  at::Tensor image;                ///< grid models: uint8 [C,H,W] at the model's size
  std::shared_ptr<const Bag> bag;  ///< tiled models
};

/// Answers jobs [begin, end), which share one model: the grid images in one forward pass.
void run_group(
    std::vector<Job>& jobs, size_t begin, size_t end, int64_t top,
    std::vector<nlohmann::json>& out) {
  PatchClassifier& model = jobs[begin].loaded->model;
  if (model->config().tiled) {
    for (size_t i = begin; i < end; ++i) {
      const Bag& bag = *jobs[i].bag;
      out[i] = bag_prediction_json(
          model->config(), jobs[i].name, bag, predict_bag(model, bag.tiles, -1), top);
    }
    return;
  }
  std::vector<at::Tensor> images;
  std::vector<std::string> names;
  for (size_t i = begin; i < end; ++i) {
    images.push_back(jobs[i].image);
    names.push_back(jobs[i].name);
  }
  torch::InferenceMode guard;
  const PatchOutput o = model->forward(torch::stack(images).to(model->device()));
  std::vector<nlohmann::json> answers =
      grid_predictions_json(*model, names, o.patch_logits, o.log_probs);
  std::move(answers.begin(), answers.end(), out.begin() + static_cast<std::ptrdiff_t>(begin));
}

/// The batcher's work: consecutive jobs of one model go through it together.
std::vector<nlohmann::json> run_jobs(std::vector<Job>& jobs, int64_t top) {
  std::vector<nlohmann::json> out(jobs.size());
  for (size_t begin = 0; begin < jobs.size();) {
    size_t end = begin + 1;
    while (end < jobs.size() && jobs[end].loaded == jobs[begin].loaded) ++end;
    run_group(jobs, begin, end, top, out);
    begin = end;
  }
  return out;
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(error_body(message), "application/json");
}

/// send_error, then the connection closes (with Connection: close): for a request whose
/// body was not read to its end (too large, of unknown or contradictory length, malformed,
/// or sent with a method that takes none), where whatever follows on the connection may be
/// the rest of that body and must never be parsed as requests.
void send_error_and_close(httplib::Response& res, int status, const std::string& message) {
  send_error(res, status, message);
  res.set_header("Connection", "close");
  close_after_answer();
}

void send_json(httplib::Response& res, const nlohmann::json& body) {
  res.set_content(json_text(body) + "\n", "application/json");
}

/// "Bearer TOKEN" compared in time that does not depend on where it differs.
bool bearer_matches(const std::string& header, const std::string& token) {
  const std::string expected = "Bearer " + token;
  if (header.size() != expected.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < header.size(); ++i) {
    diff |= static_cast<unsigned char>(header[i] ^ expected[i]);
  }
  return diff == 0;
}

/// A media type without its parameters, lower case.
std::string media_type(const std::string& content_type) {
  std::string type = content_type.substr(0, content_type.find(';'));
  type.erase(
      std::remove_if(type.begin(), type.end(), [](unsigned char c) { return std::isspace(c); }),
      type.end());
  std::transform(type.begin(), type.end(), type.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  return type;
}

/// Raw bytes are taken as an image file when they say so or say nothing.
bool image_media_type(const std::string& type) {
  return type.empty() || type.rfind("image/", 0) == 0 || type == "application/octet-stream";
}

/// The body of a request, read through httplib's content reader under a size limit.
struct Upload {
  std::string bytes;
  std::string name = "upload";
  std::string type;  ///< media type of the raw body or of the form's file
  int status = 0;    ///< non-zero: the request is refused with this status
  std::string error;
  bool complete = true;  ///< false: the body was not read to its end (the connection closes)
};

/// A receiver that appends to `to` until `limit` bytes, then counts and drops the
/// rest up to kDiscardFactor * limit (the request is refused with 413 either way).
httplib::ContentReceiver limited_receiver(std::string& to, int64_t limit, int64_t& total) {
  return [&to, limit, &total](const char* data, size_t n) {
    total += static_cast<int64_t>(n);
    if (total <= limit) to.append(data, n);
    return total <= kDiscardFactor * limit;
  };
}

Upload read_upload(
    const httplib::Request& req, const httplib::ContentReader& read, int64_t limit,
    httplib::Response& res) {
  Upload up;
  int64_t total = 0;
  bool ok = false;
  if (req.is_multipart_form_data()) {
    std::vector<httplib::MultipartFormData> parts;
    std::string sink;
    ok = read(
        [&](const httplib::MultipartFormData& part) {
          parts.push_back(part);
          return true;
        },
        [&](const char* data, size_t n) {
          return limited_receiver(parts.empty() ? sink : parts.back().content, limit, total)(
              data, n);
        });
    const auto file = std::find_if(parts.begin(), parts.end(), [](const auto& p) {
      return !p.filename.empty() || p.name == "image";
    });
    if (ok && file != parts.end()) {
      up.bytes = std::move(file->content);
      if (!file->filename.empty()) up.name = file->filename;
      up.type = media_type(file->content_type);
    } else if (ok) {
      up.status = 400;
      up.error = "multipart form without a file: expected the image as a file field";
    }
  } else {
    ok = read(limited_receiver(up.bytes, limit, total));
    up.type = media_type(req.get_header_value("Content-Type"));
  }
  if (total > limit || res.status == 413) {
    up.status = 413;
    up.error = fmt::format("request body larger than {} bytes (--max-upload)", limit);
    up.complete = false;
  } else if (!ok && request_timed_out()) {
    up.status = 408;
    up.error = "the request body did not arrive in time (--min-body-rate)";
    up.complete = false;
  } else if (!ok && up.status == 0) {
    up.status = 400;
    up.error = "the request body could not be read (truncated or malformed)";
    up.complete = false;
  }
  return up;
}

/// The upload name's extension when it is short and plain (".png"), else "": it helps
/// the readers that go by extension.
std::string safe_extension(const std::string& name) {
  const size_t dot = name.rfind('.');
  if (dot == std::string::npos) return "";
  std::string ext = name.substr(dot);
  const bool plain =
      ext.size() <= 6 &&
      std::all_of(ext.begin() + 1, ext.end(), [](unsigned char c) { return std::isalnum(c) != 0; });
  return plain ? ext : "";
}

/// What an error status means, for the errors httplib answers by itself.
std::string status_text(int status) {
  switch (status) {
    case 400:
      return "malformed request";
    case 404:
      return "no such path";
    case 413:
      return "request body too large";
    case 414:
      return "request line too long";
    case 416:
      return "range not satisfiable";
    default:
      return fmt::format("HTTP status {}", status);
  }
}

}  // namespace

struct ModelServer::Impl {
  ServeOptions options;
  c10::Device device{c10::kCPU};
  std::shared_ptr<Loaded> loaded;  ///< read and swapped with std::atomic_load/store
  ServeMetrics metrics;
  std::unique_ptr<Batcher<Job, nlohmann::json>> batcher;
  GuardedServer http{options.connections, options.timeout_s};
  std::string upload_dir;
  std::atomic<bool> stopping{false};
  bool bound = false;

  Impl(const std::string& model_path, ServeOptions o);
  ~Impl();
  std::shared_ptr<Loaded> current() const { return std::atomic_load(&loaded); }
  void routes();
  httplib::Server::HandlerResponse pre_route(const httplib::Request& req, httplib::Response& res);
  bool authorized(const httplib::Request& req, httplib::Response& res) const;
  void predict(
      const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read);
  void refuse_with_body(
      const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read);
  Job decode(const Upload& up, std::shared_ptr<Loaded> model);
  void answer(Job job, httplib::Response& res);
};

ModelServer::Impl::Impl(const std::string& model_path, ServeOptions o)
    : options(std::move(o)), device(resolve_device(options.device)) {
  // cpp-httplib 0.11 sends without MSG_NOSIGNAL: a client gone before its answer would
  // otherwise end the whole process with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  loaded = load(model_path, device, options.precision);
  char dir[] = "/tmp/patchwise-serve-XXXXXX";
  check_input(::mkdtemp(dir) != nullptr, "serve: cannot create a folder for uploads in /tmp");
  upload_dir = dir;
  const int64_t top = options.top;
  batcher = std::make_unique<Batcher<Job, nlohmann::json>>(
      options.batching,
      [top](std::vector<Job>& jobs) { return run_jobs(jobs, top); },
      [this](size_t n) { metrics.batch(n); });
  routes();
}

ModelServer::Impl::~Impl() {
  http.stop();
  batcher->drain();
  std::error_code ignored;
  fs::remove_all(upload_dir, ignored);
}

/// The paths served, each with its methods; a path starting /v1/ or /metrics needs
/// the token when one is set.
const std::map<std::string, std::set<std::string>>& known_paths() {
  // Never destroyed: connection threads may still route while the process exits.
  static const auto* paths = new std::map<std::string, std::set<std::string>>{
      {"/", {"GET", "HEAD"}},
      {"/healthz", {"GET", "HEAD"}},
      {"/readyz", {"GET", "HEAD"}},
      {"/metrics", {"GET", "HEAD"}},
      {"/v1/model", {"GET", "HEAD"}},
      {"/v1/predict", {"POST"}}};
  return *paths;
}

/// The methods whose body httplib reads (through the routes' content readers).
const std::set<std::string>& methods_with_body() {
  static const auto* methods = new std::set<std::string>{"POST", "PUT", "PATCH", "DELETE"};
  return *methods;
}

std::string path_label(const std::string& path) {
  return known_paths().count(path) ? path : "other";
}

/// 404 for an unknown path, 405 (with Allow) for a method the path does not take:
/// true when the request was refused.
bool refuse_route(const httplib::Request& req, httplib::Response& res) {
  const auto known = known_paths().find(req.path);
  if (known == known_paths().end()) {
    send_error(res, 404, fmt::format("{}: no such path", printable(req.path)));
    return true;
  }
  if (known->second.count(req.method)) return false;
  res.set_header("Allow", fmt::format("{}", fmt::join(known->second, ", ")));
  send_error(
      res,
      405,
      fmt::format(
          "{} {}: method not allowed, expected {}",
          printable(req.method, 40),
          req.path,
          fmt::join(known->second, " or ")));
  return true;
}

/// A body's framing that cannot be trusted is refused at once, and the connection closed:
/// a Content-Length that is not a plain count of bytes, two that differ, one beside a
/// Transfer-Encoding (RFC 9112, 6.1: a request smuggling vector), or a body declared larger
/// than kDiscardFactor x --max-upload (a smaller excess is read and dropped, so that the
/// client is sure to read its 413 before the connection closes). True when refused.
bool refuse_framing(const httplib::Request& req, httplib::Response& res, int64_t max_upload) {
  const size_t lengths = req.get_header_value_count("Content-Length");
  if (lengths == 0) return false;
  if (req.has_header("Transfer-Encoding")) {
    send_error_and_close(
        res, 400, "both Content-Length and Transfer-Encoding: expected one of them (RFC 9112)");
    return true;
  }
  const std::string value = req.get_header_value("Content-Length");
  for (size_t i = 1; i < lengths; ++i) {
    if (req.get_header_value("Content-Length", i) != value) {
      send_error_and_close(res, 400, "Content-Length given twice with different values");
      return true;
    }
  }
  const bool digits =
      !value.empty() && value.size() <= 18 &&
      std::all_of(value.begin(), value.end(), [](unsigned char c) { return std::isdigit(c); });
  if (!digits) {
    send_error_and_close(
        res,
        400,
        fmt::format(
            "Content-Length '{}': expected a count of bytes (at most 18 digits)",
            printable(value, 40)));
    return true;
  }
  if (std::stoll(value) > kDiscardFactor * max_upload) {
    send_error_and_close(
        res,
        413,
        fmt::format("request body of {} bytes, larger than {} (--max-upload)", value, max_upload));
    return true;
  }
  return false;
}

thread_local Clock::time_point t_request_start;

bool ModelServer::Impl::authorized(const httplib::Request& req, httplib::Response& res) const {
  const bool guarded = req.path.rfind("/v1/", 0) == 0 || req.path == "/metrics";
  if (!guarded || options.token.empty() ||
      bearer_matches(req.get_header_value("Authorization"), options.token)) {
    return true;
  }
  res.set_header("WWW-Authenticate", "Bearer");
  send_error(
      res,
      401,
      fmt::format(
          "{}: missing or wrong token, expected "
          "'Authorization: Bearer TOKEN'",
          req.path));
  return false;
}

/// Refusals that need no body: too many headers, an unknown path, a method the path
/// does not take, a missing token. A request that carries a body is refused only once
/// its body is read (refuse_with_body), so that the connection stays in step.
httplib::Server::HandlerResponse ModelServer::Impl::pre_route(
    const httplib::Request& req, httplib::Response& res) {
  using R = httplib::Server::HandlerResponse;
  t_request_start = Clock::now();
  if (req.headers.size() > kMaxHeaders) {
    send_error(
        res,
        431,
        fmt::format("{} request headers, expected at most {}", req.headers.size(), kMaxHeaders));
    return R::Handled;
  }
  if (refuse_framing(req, res, options.max_upload)) return R::Handled;
  const bool has_body =
      req.get_header_value<uint64_t>("Content-Length") > 0 || req.has_header("Transfer-Encoding");
  if (has_body && !methods_with_body().count(req.method)) {
    // httplib would not read it: its bytes would be parsed as the next request.
    send_error_and_close(
        res, 400, fmt::format("{} with a body: expected none", printable(req.method, 40)));
    return R::Handled;
  }
  if (has_body) return R::Unhandled;
  if (refuse_route(req, res)) return R::Handled;
  return authorized(req, res) ? R::Unhandled : R::Handled;
}

void ModelServer::Impl::refuse_with_body(
    const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
  const Upload up = read_upload(req, read, options.max_upload, res);
  if (!up.complete) return send_error_and_close(res, up.status, up.error);
  if (!refuse_route(req, res))
    send_error(res, 404, fmt::format("{}: no such path", printable(req.path)));
}

/// A grid model's image is decoded from the request's bytes; a tiled model's image goes
/// through a file, which the region readers open (and read region by region).
Job ModelServer::Impl::decode(const Upload& up, std::shared_ptr<Loaded> model) {
  const ModelConfig& config = model->model->config();
  Job job{std::move(model), up.name, {}, nullptr};
  if (!config.tiled) {
    at::Tensor image = decode_image(up.bytes, up.name, config.image_channels);
    if (image.size(1) != config.image_h || image.size(2) != config.image_w) {
      image = resize_image(image, config.image_h, config.image_w);
    }
    job.image = image;
    return job;
  }
  with_scratch_file(
      up.bytes, upload_dir, safe_extension(up.name), up.name, [&](const std::string& path) {
        job.bag =
            std::make_shared<const Bag>(read_bag(path, model_bag_options(config, options.reader)));
      });
  return job;
}

void ModelServer::Impl::answer(Job job, httplib::Response& res) {
  auto future = batcher->submit(std::move(job));
  if (!future) {
    res.set_header("Retry-After", "1");
    return send_error(
        res,
        503,
        fmt::format(
            "{} requests already wait (--max-queue); retry later", options.batching.max_queue));
  }
  const auto limit = std::chrono::duration<double>(options.timeout_s);
  if (future->wait_for(limit) != std::future_status::ready) {
    res.set_header("Retry-After", "1");
    return send_error(
        res, 503, fmt::format("no answer within {} s (--timeout)", options.timeout_s));
  }
  try {
    send_json(res, future->get());
  } catch (const InputError& e) {
    send_error(res, 400, e.what());
  }
}

void ModelServer::Impl::predict(
    const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
  const Upload up = read_upload(req, read, options.max_upload, res);
  if (!up.complete) return send_error_and_close(res, up.status, up.error);
  if (up.status != 0) return send_error(res, up.status, up.error);
  if (!authorized(req, res)) return;
  if (stopping) return send_error(res, 503, "the server is shutting down");
  if (!image_media_type(up.type)) {
    return send_error(
        res,
        415,
        fmt::format(
            "content type '{}', expected an image (image/*, "
            "application/octet-stream or a multipart form)",
            up.type));
  }
  if (up.bytes.empty()) return send_error(res, 400, "empty body, expected an image file");
  Job job;
  try {
    job = decode(up, current());
  } catch (const InputError& e) {
    return send_error(res, 400, e.what());
  }
  answer(std::move(job), res);
}

void ModelServer::Impl::routes() {
  http.set_payload_max_length(static_cast<size_t>(options.max_upload));
  // Without it the answer's headers and body wait on each other's acknowledgement
  // (Nagle's algorithm against delayed ACKs): 40 ms for every request of a lone client.
  http.set_tcp_nodelay(true);
  // httplib closes a kept-alive connection after 5 requests by default: reconnections
  // that cost a handshake each.
  http.set_keep_alive_max_count(100000);
  // Reads run against ConnectionLimits' deadlines (guarded_server.h); writes against this.
  const auto timeout = std::chrono::duration<double>(options.timeout_s);
  http.set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
  http.set_pre_routing_handler([this](const auto& req, auto& res) { return pre_route(req, res); });
  http.Get("/", [](const auto&, auto& res) { res.set_content(serve_page(), "text/html"); });
  http.Get("/healthz", [](const auto&, auto& res) { send_json(res, {{"status", "ok"}}); });
  http.Get("/readyz", [this](const auto&, auto& res) {
    if (stopping) return send_error(res, 503, "shutting down");
    send_json(res, {{"status", "ready"}});
  });
  http.Get("/metrics", [this](const auto&, auto& res) {
    res.set_content(
        metrics.render(batcher->queue_depth(), http.counts()), "text/plain; version=0.0.4");
  });
  http.Get("/v1/model", [this](const auto&, auto& res) { send_json(res, current()->info); });
  http.Post("/v1/predict", [this](const auto& req, auto& res, const auto& read) {
    predict(req, res, read);
  });
  const auto refuse = [this](const auto& req, auto& res, const auto& read) {
    refuse_with_body(req, res, read);
  };
  http.Post(".*", refuse);
  http.Put(".*", refuse);
  http.Patch(".*", refuse);
  http.Delete(".*", refuse);
  http.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty() || res.content_provider_) {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        // httplib's own refusals are of requests it could not parse: what follows on the
        // connection cannot be trusted to start a request.
        if (request_timed_out()) {
          send_error_and_close(res, 408, late_request_message(options.connections));
        } else {
          send_error_and_close(
              res,
              res.status,
              fmt::format(
                  "{} {}: {}",
                  printable(req.method, 40),
                  printable(req.path),
                  status_text(res.status)));
        }
        return httplib::Server::HandlerResponse::Handled;
      }));
  http.set_exception_handler([](const auto&, auto& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      send_error(res, 500, fmt::format("internal error: {}", e.what()));
    } catch (...) {
      send_error(res, 500, "internal error");
    }
  });
  // Counted before the answer is written, so that a client that reads /metrics after
  // its answer finds its request there.
  http.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    const double seconds =
        t_request_start == Clock::time_point{}
            ? 0.0
            : std::chrono::duration<double>(Clock::now() - t_request_start).count();
    t_request_start = {};
    metrics.request(path_label(req.path), res.status, seconds);
  });
}

ModelServer::ModelServer(const std::string& model_path, ServeOptions options)
    : impl_(std::make_unique<Impl>(model_path, std::move(options))) {}

ModelServer::~ModelServer() = default;

int ModelServer::bind() {
  const ServeOptions& o = impl_->options;
  const int port = o.port == 0 ? impl_->http.bind_to_any_port(o.host)
                               : (impl_->http.bind_to_port(o.host, o.port) ? o.port : -1);
  check_input(
      port > 0,
      "serve: cannot listen on {}:{} (in use, or not an address of this machine)",
      o.host,
      o.port);
  impl_->http.widen_backlog();
  impl_->bound = true;
  return port;
}

void ModelServer::serve() {
  if (!impl_->bound) bind();
  impl_->http.listen_after_bind();
  impl_->batcher->drain();
}

void ModelServer::stop() {
  impl_->stopping = true;
  impl_->http.stop();
}

void ModelServer::reload(const std::string& path) {
  std::shared_ptr<Loaded> next = load(path, impl_->device, impl_->options.precision);
  std::atomic_store(&impl_->loaded, std::move(next));
}

std::pair<size_t, uint64_t> ModelServer::batches() const { return impl_->metrics.batches(); }

}  // namespace patchwise
