#pragma once
// patchwise serve: one model behind an HTTP API (cpp-httplib), loaded once, with
// concurrent requests batched into one forward pass (serve/batcher.h).
//
//   POST /v1/predict   an image (raw body, or the first file of a multipart form): the
//                      object `patchwise predict --json` prints for it
//   GET  /v1/model     the model's configuration, classes and training summary
//   GET  /healthz      200 while the process runs
//   GET  /readyz       200 while a model is loaded and requests are taken, else 503
//   GET  /metrics      Prometheus text (serve/metrics.h)
//   GET  /             a web page to try the model in a browser
//
// Errors are JSON {"error": "..."} with one line, and the status says which:
// 400 undecodable or malformed, 401 token missing or wrong, 404 unknown path,
// 405 wrong method, 408 request not read by its deadline, 413 body beyond max_upload,
// 415 content type that is not an image, 431 too many headers, 503 queue full or
// connections at their cap (with Retry-After) or shutting down.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "patchwise/base/precision.h"
#include "patchwise/data/region.h"
#include "patchwise/serve/batcher.h"
#include "patchwise/serve/connections.h"

namespace patchwise {

struct ServeOptions {
  std::string host = "127.0.0.1";   ///< the address to bind
  int port = 8080;                  ///< 0: any free port (see ModelServer::bind)
  ConnectionLimits connections;     ///< open at once, and the deadlines of reading requests
  BatcherOptions batching;          ///< max_batch, max_delay_ms, max_queue
  int64_t max_upload = 64ll << 20;  ///< bytes of body (after decompression)
  double timeout_s = 30;            ///< a write of an answer, and the wait for an answer
  std::string token;                ///< non-empty: /v1/ and /metrics need "Bearer TOKEN"
  RegionReaderOptions reader;       ///< how uploaded large images are opened (max_pixels)
  int64_t top = 5;                  ///< tiled models: the top tiles listed
  std::string device = "cpu";       ///< where the model runs: cpu, cuda or auto
  Precision precision = Precision::kFloat32;  ///< the backbone's arithmetic (base/precision.h)
};

class ModelServer {
 public:
  /// Loads the model; throws InputError when the file cannot be loaded.
  ModelServer(const std::string& model_path, ServeOptions options);
  ~ModelServer();
  ModelServer(const ModelServer&) = delete;
  ModelServer& operator=(const ModelServer&) = delete;

  /// Binds options.host:port; returns the port (the one chosen for port 0). Throws
  /// InputError naming the address when it cannot be bound.
  int bind();
  /// Serves until stop(); the requests already taken are answered before it returns.
  void serve();
  /// Stops taking connections and requests (readyz turns 503); serve() returns once
  /// every request taken is answered. Safe from any thread, once or more.
  void stop();
  /// Loads `path` and swaps it in for the requests that arrive from now on. Throws
  /// InputError (the current model stays) when the file cannot be loaded.
  void reload(const std::string& path);

  /// The largest batch so far and the number of forward passes.
  std::pair<size_t, uint64_t> batches() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace patchwise
