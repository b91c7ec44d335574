// Attention micro-benchmark on the SmolLM2-135M shape (9 heads / 3 kv heads of 64, block_len
// 128), one thread, best kernel table: a 512-token prefill cut into the model's units (64
// queries x 1 head), and a batch-1 decode step (n = 1) at several context lengths. Reports
// thread CPU time, min over repeats (the box is shared: wall time measures the other tenants).
// Usage: bench_attention [head_dim [kv: f16|f32|i8]]   (default: 64 f16)
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"

using namespace turbolm::kernels;

namespace {

double thread_cpu() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

template <typename F>
double min_cpu(int reps, const F& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = thread_cpu();
    f();
    best = std::min(best, thread_cpu() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int D = argc > 1 ? std::atoi(argv[1]) : 64;
  const char* kvs = argc > 2 ? argv[2] : "f16";
  const KVType type = !std::strcmp(kvs, "f32") ? KVType::kF32 : !std::strcmp(kvs, "i8") ? KVType::kI8 : KVType::kF16;
  const KernelTable& kt = best_kernels();
  const int heads = 9, kv_heads = 3, bl = 128, max_len = 2048, chunk = 64;
  const size_t es = type == KVType::kF32 ? 4 : type == KVType::kF16 ? 2 : 1;
  const int n_blocks = max_len / bl;
  PagedKV kv;
  std::vector<uint8_t> kc((size_t)n_blocks * kv_heads * bl * D * es), vc(kc.size());
  std::vector<int32_t> table(n_blocks);
  for (int i = 0; i < n_blocks; ++i) table[i] = (i * 7 + 3) % n_blocks;
  kv.k_base = kc.data();
  kv.v_base = vc.data();
  kv.block_stride = (int64_t)kv_heads * bl * D;
  kv.head_stride = (int64_t)bl * D;
  kv.block_table = table.data();
  kv.block_len = bl;
  kv.type = type;
  if (type == KVType::kI8) kv.k_scale = kv.v_scale = 0.02f;
  const int ld = heads * D;
  std::vector<float> q((size_t)max_len * ld), out(q.size()), k((size_t)max_len * kv_heads * D), v(k.size());
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * i);
  for (size_t i = 0; i < k.size(); ++i) { k[i] = std::cos(0.11f * i); v[i] = std::sin(0.23f * i); }
  kt.kv_store(k.data(), v.data(), kv_heads * D, max_len, 0, kv_heads, D, kv);
  std::vector<float> scratch(max_len + 64);
  AttnParams scale;
  scale.scale = 1.f / std::sqrt((float)D);
  std::printf("kernel table: %s, head_dim %d, kv %s; thread CPU time, min of repeats\n", kt.name, D, kvs);

  const int P = 512;
  const double pre = min_cpu(7, [&] {
    for (int q0 = 0; q0 < P; q0 += chunk)
      for (int h = 0; h < heads; ++h)
        kt.attention(q.data() + (size_t)q0 * ld, ld, std::min(chunk, P - q0), q0, heads, kv_heads, D, kv, scale,
                     out.data() + (size_t)q0 * ld, ld, h, h + 1, scratch.data());
  });
  const double flops = 4.0 * heads * D * (double)P * (P + 1) / 2;  // QK^T + PV over the causal half
  std::printf("prefill %d tokens, 1 layer: %8.3f ms  (%6.2f GFLOP/s; x30 layers = %.1f ms)\n", P, pre * 1e3,
              flops / pre / 1e9, pre * 30e3);
  for (int len : {128, 512, 2048}) {
    const double dec = min_cpu(21, [&] {
      for (int rep = 0; rep < 10; ++rep)
        kt.attention(q.data(), ld, 1, len - 1, heads, kv_heads, D, kv, scale, out.data(), ld, 0, heads, scratch.data());
    }) / 10;
    std::printf("decode n=1 at len %4d, 1 layer: %8.2f us  (x30 layers = %.2f ms)\n", len, dec * 1e6, dec * 30e3);
  }
  return 0;
}
