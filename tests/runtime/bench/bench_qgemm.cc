// Quantized GEMM micro-benchmark on the SmolLM2-135M shapes (int4 / int8 weights, group size 64 by
// default, best QKernelTable), next to the fp16 GEMM on the same shapes. M=1 rotates over enough
// weight copies to exceed the L3 cache, as a real decode step does; larger M reuses one copy.
// GB/s counts the bytes the kernel streams (q + per-group scales); "fp16-eq GB/s" is the fp16
// bytes of the same matrix per second (the speed-up of decode over fp16 at equal bandwidth).
// "i4a8" / "i8a8" rows: int8 activations (act_type = int8), the quantization of x included.
// Usage: bench_qgemm [group_size] [threads...]   (default: 64  1 2)
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/threadpool.h"
#include "kernels/kernels.h"
#include "kernels/qgemm.h"

using namespace turbolm::kernels;
using Clock = std::chrono::steady_clock;

namespace {

double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct Buf {
  std::unique_ptr<void, decltype(&std::free)> p{nullptr, &std::free};
  explicit Buf(size_t bytes) : p(std::aligned_alloc(64, (bytes + 63) / 64 * 64), &std::free) {}
};

// One weight in whichever format: bits 16 = fp16 PackedMatrix, 4 / 8 = QPackedMatrix.
struct Weight {
  int bits;
  Buf a, b;
  PackedMatrix pm;
  QPackedMatrix qm;
  size_t bytes;
  Weight(int bits_, int K, int N, int G, uint32_t seed)
      : bits(bits_),
        a(bits_ == 16 ? packed_elems(K, N) * 2 : qpacked_q_bytes(bits_, K, N)),
        b(bits_ == 16 ? 64 : qpacked_sz_floats(K, N, G) * 4) {
    auto rnd = [&] { seed = seed * 1664525u + 1013904223u; return seed >> 8; };
    if (bits == 16) {
      std::vector<uint16_t> src((size_t)K * N);
      for (auto& v : src) v = f32_to_f16((rnd() & 0xffff) / 65536.f - 0.5f);
      pack_matrix(src.data(), K, N, N, 1, (uint16_t*)a.p.get());
      pm = PackedMatrix{WDType::kF16, K, N, (N + kPanel - 1) / kPanel, (const uint16_t*)a.p.get()};
      bytes = (size_t)K * N * 2;
    } else {
      std::vector<uint8_t> q((size_t)K * N);
      for (auto& v : q) v = (uint8_t)(rnd() & ((1u << bits) - 1));
      std::vector<float> s((size_t)(K / G) * N, 0.01f), z(s.size(), (float)(1 << (bits - 1)));
      qpack_matrix(bits, K, N, G, q.data(), N, s.data(), z.data(), N, (uint8_t*)a.p.get(), (float*)b.p.get());
      qm = QPackedMatrix{bits, K, N, qpanels(N), G, (const uint8_t*)a.p.get(), (const float*)b.p.get()};
      bytes = qpacked_q_bytes(bits, K, N) + qpacked_sz_floats(K, N, G) * 4;
    }
  }
  int n_panels() const { return bits == 16 ? pm.n_panels : qm.n_panels; }
};

// Int8 activations of up to 512 rows x 1536 (the widest K).
struct A8 {
  std::vector<int8_t> q = std::vector<int8_t>((size_t)512 * 1536);
  std::vector<float> a = std::vector<float>((size_t)512 * 1536 / 16), sum = a;
};

void run(turbolm::ThreadPool& pool, const float* x, const Weight& w, float* y, int M, int K, int N, A8* a8) {
  const KernelTable& kt = best_kernels();
  const QKernelTable& qt = best_qkernels();
  if (a8) {
    const int B = act_block(w.qm.group_size), ldg = K / B;
    pool.parallel_for(M, [&](int b, int e) {
      qt.quantize_acts(x + (size_t)b * K, K, e - b, K, B, a8->q.data() + (size_t)b * K, K, a8->a.data() + (size_t)b * ldg,
                       a8->sum.data() + (size_t)b * ldg, ldg);
    });
    const QActs acts{K, B, a8->q.data(), K, a8->a.data(), a8->sum.data(), ldg};
    pool.parallel_for(w.n_panels(), [&](int b, int e) { qt.qgemm_a8(acts, w.qm, y, N, M, b, e, false); });
    return;
  }
  pool.parallel_for(w.n_panels(), [&](int b, int e) {
    if (w.bits == 16) kt.gemm(x, K, w.pm, y, N, M, b, e, false);
    else qt.qgemm(x, K, w.qm, y, N, M, b, e, false);
  });
}

}  // namespace

int main(int argc, char** argv) {
  const int G = argc > 1 ? std::atoi(argv[1]) : 64;
  std::vector<int> threads;
  for (int i = 2; i < argc; ++i) threads.push_back(std::atoi(argv[i]));
  if (threads.empty()) threads = {1, 2};
  std::printf("tables: fp16 %s, quantized %s; group size %d; physical cores %d\n", best_kernels().name,
              best_qkernels().name, G, turbolm::ThreadPool::physical_cores());
  struct Shape { const char* name; int K, N; } shapes[] = {
      {"qkv", 576, 960}, {"wo", 576, 576}, {"w1/w3", 576, 1536}, {"w2", 1536, 576},
      {"lmhead", 576, 49152}};  // int8 for quantized workspaces (model/weights.h kLMHeadBits)
  std::vector<float> x((size_t)512 * 1536), y((size_t)512 * 49152);  // y: M = 512 rows of the widest N
  for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 7919) % 1000) / 1000.f - 0.5f;
  std::printf("%-6s %5s %5s %4s %4s %3s %9s %8s %9s %9s | %9s %8s %9s\n", "shape", "K", "N", "fmt", "M", "thr",
              "us/call", "GB/s", "fp16eq", "GFLOP/s", "cpu-us", "GB/s", "GFLOP/s");
  A8 a8buf;
  for (const Shape& s : shapes)
    for (int fmt : {16, 8, 4, -8, -4}) {  // negative: the same bits with int8 activations
      const int bits = fmt < 0 ? -fmt : fmt;
      A8* a8 = fmt < 0 ? &a8buf : nullptr;
      const size_t bytes = bits == 16 ? (size_t)s.K * s.N * 2 : qpacked_q_bytes(bits, s.K, s.N) + qpacked_sz_floats(s.K, s.N, G) * 4;
      const int copies = (int)((160u << 20) / bytes) + 1;
      std::vector<std::unique_ptr<Weight>> ws;
      for (int c = 0; c < copies; ++c) ws.emplace_back(new Weight(bits, s.K, s.N, G, 17 + c));
      for (int M : {1, 8, 32, 512})
        for (int t : threads) {
          turbolm::ThreadPool pool(t);
          const int n_w = M == 1 ? copies : 1;
          run(pool, x.data(), *ws[0], y.data(), M, s.K, s.N, a8);
          int iters = 0;
          const auto t0 = Clock::now();
          const double c0 = cpu_seconds();
          double el = 0;
          do {
            run(pool, x.data(), *ws[iters % n_w], y.data(), M, s.K, s.N, a8);
            ++iters;
            el = std::chrono::duration<double>(Clock::now() - t0).count();
          } while (el < 0.3 || iters < 3);
          const double sec = el / iters, csec = (cpu_seconds() - c0) / iters / t;
          std::printf("%-6s %5d %5d %4s %4d %3d %9.1f %8.2f %9.2f %9.2f | %9.1f %8.2f %9.2f\n", s.name, s.K, s.N,
                      fmt == 16 ? "fp16" : fmt == 8 ? "int8" : fmt == 4 ? "int4" : fmt == -8 ? "i8a8" : "i4a8", M, t, sec * 1e6, bytes / sec / 1e9,
                      (double)s.K * s.N * 2 / sec / 1e9, 2.0 * M * s.K * s.N / sec / 1e9, csec * 1e6,
                      bytes / csec / 1e9, 2.0 * M * s.K * s.N / csec / 1e9);
        }
    }
  return 0;
}
