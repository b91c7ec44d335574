// GEMM micro-benchmark on the SmolLM2-135M shapes (fp16 weights, best kernel table), split over
// panels with the ThreadPool. M=1 rotates over enough weight copies to exceed the L3 cache, as a
// real decode step does (30 layers x ~9 MB); larger M reuses one copy. Last: a whole-model
// decode sweep (30 layers + lm head, M=1) giving the GEMM-only upper bound on tokens/s. Rows
// "bf16": the same weights as bf16 k-pairs on gemm_bf16 (act_type bf16), when the table has it.
// Usage: bench_gemm [threads...]   (default: 1 2)
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "core/threadpool.h"
#include "kernels/kernels.h"

using namespace turbolm::kernels;
using Clock = std::chrono::steady_clock;

// Process CPU seconds: on a shared, oversubscribed machine wall time mostly measures the other
// tenants; CPU time / threads estimates the unloaded time (spin-waits count as busy).
double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

namespace {

struct Weight {
  std::unique_ptr<uint16_t, decltype(&std::free)> buf{nullptr, &std::free}, bbuf{nullptr, &std::free};
  PackedMatrix pm;
  PackedBF16 bm;
};

Weight make_weight(int K, int N, uint32_t seed) {
  Weight w;
  const size_t elems = packed_elems(K, N);
  w.buf.reset(static_cast<uint16_t*>(std::aligned_alloc(64, (elems * 2 + 63) / 64 * 64)));
  std::vector<uint16_t> src((size_t)K * N);
  for (auto& v : src) { seed = seed * 1664525u + 1013904223u; v = f32_to_f16(((seed >> 9) & 0xffff) / 65536.f - 0.5f); }
  pack_matrix(src.data(), K, N, N, 1, w.buf.get());
  w.pm = PackedMatrix{WDType::kF16, K, N, (N + kPanel - 1) / kPanel, w.buf.get()};
  w.bbuf.reset(static_cast<uint16_t*>(std::aligned_alloc(64, (elems * 2 + 63) / 64 * 64)));
  pack_bf16_pairs(w.pm, w.bbuf.get());
  w.bm = PackedBF16{K, N, w.pm.n_panels, w.bbuf.get()};
  return w;
}

bool g_bf16 = false;  // the rows being measured: fp16 gemm, or gemm_bf16

void run(const KernelTable& kt, turbolm::ThreadPool& pool, const float* x, const Weight& w, float* y, int M) {
  pool.parallel_for(w.pm.n_panels, [&](int b, int e) {
    if (g_bf16) kt.gemm_bf16(x, w.pm.K, w.bm, y, w.pm.N, M, b, e, false);
    else kt.gemm(x, w.pm.K, w.pm, y, w.pm.N, M, b, e, false);
  });
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads;
  for (int i = 1; i < argc; ++i) threads.push_back(std::atoi(argv[i]));
  if (threads.empty()) threads = {1, 2};
  const KernelTable& kt = best_kernels();
  std::printf("kernel table: %s, physical cores: %d\n", kt.name, turbolm::ThreadPool::physical_cores());
  struct Shape { const char* name; int K, N; } shapes[] = {
      {"qkv", 576, 960}, {"wo", 576, 576}, {"w1/w3", 576, 1536}, {"w2", 1536, 576}, {"lm_head", 576, 49152}};
  std::vector<float> x((size_t)512 * 1536), y((size_t)512 * 49152);
  for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 7919) % 1000) / 1000.f - 0.5f;
  std::printf("wall: elapsed time; cpu: process CPU time / threads (the unloaded estimate on a shared box)\n");
  std::printf("%-8s %5s %5s %4s %3s %10s %9s %9s | %9s %9s %9s\n", "shape", "K", "N", "M", "thr", "us/call", "GB/s",
              "GFLOP/s", "cpu-us", "GB/s", "GFLOP/s");
  for (bool bf16 : {false, true}) {
  if (bf16 && !kt.gemm_bf16) break;
  g_bf16 = bf16;
  std::printf("---- %s\n", bf16 ? "bf16 (gemm_bf16)" : "fp16 (gemm)");
  for (const Shape& s : shapes) {
    const size_t bytes = (size_t)s.K * s.N * 2;
    const int copies = (int)((160u << 20) / bytes) + 1;  // M=1: stream > L3 like a real decode step
    std::vector<Weight> ws;
    for (int c = 0; c < copies; ++c) ws.push_back(make_weight(s.K, s.N, 17 + c));
    for (int M : {1, 8, 32, 512}) {
      for (int t : threads) {
        turbolm::ThreadPool pool(t);
        const int n_w = M == 1 ? copies : 1;
        run(kt, pool, x.data(), ws[0], y.data(), M);  // warm up
        int iters = 0;
        const auto t0 = Clock::now();
        const double c0 = cpu_seconds();
        double el = 0;
        do {
          run(kt, pool, x.data(), ws[iters % n_w], y.data(), M);
          ++iters;
          el = std::chrono::duration<double>(Clock::now() - t0).count();
        } while (el < 0.3 || iters < 3);
        const double sec = el / iters, csec = (cpu_seconds() - c0) / iters / t;
        std::printf("%-8s %5d %5d %4d %3d %10.1f %9.2f %9.2f | %9.1f %9.2f %9.2f\n", s.name, s.K, s.N, M, t, sec * 1e6,
                    bytes / sec / 1e9, 2.0 * M * s.K * s.N / sec / 1e9, csec * 1e6, bytes / csec / 1e9,
                    2.0 * M * s.K * s.N / csec / 1e9);
      }
    }
  }
  }
  // Whole-model decode sweep: 30 layers (qkv, wo, w1, w3, w2) + lm head, M = 1.
  std::vector<Weight> layers;
  for (int l = 0; l < 30; ++l)
    for (auto kn : {std::pair<int, int>{576, 960}, {576, 576}, {576, 1536}, {576, 1536}, {1536, 576}})
      layers.push_back(make_weight(kn.first, kn.second, 1000 + l));
  layers.push_back(make_weight(576, 49152, 99));
  size_t total = 0;
  for (auto& w : layers) total += (size_t)w.pm.K * w.pm.N * 2;
  for (bool bf16 : {false, true})
  for (int t : threads) {
    if (bf16 && !kt.gemm_bf16) break;
    g_bf16 = bf16;
    turbolm::ThreadPool pool(t);
    for (auto& w : layers) run(kt, pool, x.data(), w, y.data(), 1);
    const int reps = 10;
    const auto t0 = Clock::now();
    const double c0 = cpu_seconds();
    for (int r = 0; r < reps; ++r)
      for (auto& w : layers) run(kt, pool, x.data(), w, y.data(), 1);
    const double sec = std::chrono::duration<double>(Clock::now() - t0).count() / reps;
    const double csec = (cpu_seconds() - c0) / reps / t;
    std::printf("%s decode sweep (%zu MB, %zu gemms), %d thr: wall %.2f ms/token = %.1f tok/s, %.2f GB/s | "
                "cpu %.2f ms/token = %.1f tok/s, %.2f GB/s (GEMM only)\n",
                bf16 ? "bf16" : "fp16", total >> 20, layers.size(), t, sec * 1e3, 1 / sec, total / sec / 1e9, csec * 1e3, 1 / csec,
                total / csec / 1e9);
  }
  return 0;
}
