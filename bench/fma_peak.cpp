// The processor's measured FP32 peak: every thread runs independent chains of
// fused multiply-adds on the widest vectors the build targets (-march=native), so
// the figure is what the arithmetic units can do, the ceiling for any kernel.
//
//   fma_peak [THREADS] [SECONDS]   prints {"gflops": G, "threads": T, "lanes": L}
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

#if defined(__AVX512F__)
using Vec = __m512;
constexpr int kLanes = 16;
inline Vec splat(float x) { return _mm512_set1_ps(x); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float first(Vec v) { return _mm512_cvtss_f32(v); }
#elif defined(__FMA__)
using Vec = __m256;
constexpr int kLanes = 8;
inline Vec splat(float x) { return _mm256_set1_ps(x); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float first(Vec v) { return _mm256_cvtss_f32(v); }
#else
#error "fma_peak needs a processor with FMA (built with -march=native)"
#endif

// Enough independent accumulators to cover the FMA latency on two ports.
constexpr int kChains = 12;
constexpr long kInner = 1 << 16;

/// Runs FMA chains until `stop`; returns the number of vector FMAs done.
long spin(const std::atomic<bool>& stop, float* sink) {
  Vec acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = splat(0.001f * i);
  const Vec a = splat(0.999999f), b = splat(1e-7f);
  long done = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    for (long k = 0; k < kInner; ++k) {
      // Unrolled, so the chains live in registers rather than on the stack.
#pragma GCC unroll 32
      for (int i = 0; i < kChains; ++i) acc[i] = fma(acc[i], a, b);
    }
    done += kInner * kChains;
  }
  float s = 0;
  for (int i = 0; i < kChains; ++i) s += first(acc[i]);
  *sink = s;
  return done;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : int(std::thread::hardware_concurrency());
  const double seconds = argc > 2 ? std::atof(argv[2]) : 2.0;
  if (threads < 1 || seconds <= 0) {
    std::fprintf(stderr, "fma_peak: THREADS must be >= 1 and SECONDS > 0\n");
    return 2;
  }
  std::atomic<bool> stop{false};
  std::vector<long> counts(threads);
  std::vector<float> sinks(threads);
  std::vector<std::thread> pool;
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] { counts[t] = spin(stop, &sinks[t]); });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : pool) th.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double fmas = 0;
  for (long c : counts) fmas += double(c);
  const double gflops = fmas * kLanes * 2 / elapsed / 1e9;
  std::printf(
      "{\"gflops\": %.1f, \"threads\": %d, \"lanes\": %d, \"check\": %g}\n",
      gflops,
      threads,
      kLanes,
      double(sinks[0]));
  return 0;
}
