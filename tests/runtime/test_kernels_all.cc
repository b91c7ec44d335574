// Every kernel table this CPU supports against reference_kernels(), over a table of shapes:
// same results up to fp32 summation order (gemm, attention, norms) or bit-exact (stores,
// conversions). Also pack_matrix from strided views and the scalar fp16 conversions.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <string>
#include <vector>

#include "check.h"
#include "test_rng.h"
#include "kernels/kernels.h"

using namespace turbolm::kernels;

namespace {

uint16_t to_bf16(float f) {  // round to nearest even (test data only; no nan here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
uint16_t to_w(float f, WDType t) { return t == WDType::kF16 ? f32_to_f16(f) : to_bf16(f); }
float from_w(uint16_t h, WDType t) { return t == WDType::kF16 ? f16_to_f32(h) : bf16_to_f32(h); }

std::vector<const KernelTable*> simd_tables() {
  std::vector<const KernelTable*> out;
  for (const KernelTable* t : supported_kernels())
    if (t != &reference_kernels()) out.push_back(t);
  return out;
}

bool same_float(float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, 4) == 0; }

}  // namespace

// ---- fp16 conversions -------------------------------------------------------------------------
TEST(f16_hand_computed) {
  struct { float f; uint16_t h; } cases[] = {
      {0.f, 0x0000}, {-0.f, 0x8000}, {1.f, 0x3c00}, {-2.f, 0xc000}, {0.5f, 0x3800}, {65504.f, 0x7bff},
      {65519.f, 0x7bff}, {65520.f, 0x7c00}, {1e9f, 0x7c00}, {INFINITY, 0x7c00}, {-INFINITY, 0xfc00},
      {6.103515625e-05f, 0x0400},                 // smallest normal 2^-14
      {5.9604644775390625e-08f, 0x0001},          // smallest subnormal 2^-24
      {2.98023223876953125e-08f, 0x0000},         // 2^-25: tie -> even (0)
      {4.470348358154296875e-08f, 0x0001},        // 1.5 * 2^-24 ... rounds: 0.75 units up -> 1
      {8.940696716308594e-08f, 0x0002},           // 1.5 * 2^-24: tie -> even (2)
      {6.097555160522461e-05f, 0x03ff},           // largest subnormal 1023 * 2^-24
      {1.00048828125f, 0x3c00},                   // 1 + 2^-11: tie -> even
      {1.00146484375f, 0x3c02},                   // 1 + 3 * 2^-11: tie -> even (up)
      {0.1f, 0x2e66}, {0.333333343f, 0x3555}, {-1e-10f, 0x8000}, {3.14159265f, 0x4248},
  };
  for (auto& c : cases) {
    const uint16_t got = f32_to_f16(c.f);
    if (got != c.h) std::printf("  f32_to_f16(%.10g) = 0x%04x, want 0x%04x\n", c.f, got, c.h);
    CHECK_EQ(got, c.h);
  }
  CHECK(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  CHECK_EQ(f16_to_f32(0x0001), 5.9604644775390625e-08f);
  CHECK_EQ(f16_to_f32(0x03ff), 6.097555160522461e-05f);
  CHECK_EQ(f16_to_f32(0xfbff), -65504.f);
  CHECK(std::isinf(f16_to_f32(0x7c00)) && f16_to_f32(0x7c00) > 0);
  CHECK(std::isnan(f16_to_f32(0x7e00)) && std::isnan(f16_to_f32(0x7c01)));
}

TEST(f16_round_trip_all) {
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32((uint16_t)h);
    if (std::isnan(f)) { bad += !std::isnan(f16_to_f32(f32_to_f16(f))); continue; }
    bad += f32_to_f16(f) != h;
  }
  CHECK_EQ(bad, 0);
}

__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) { return _cvtss_sh(f, 0); }
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }

TEST(f16_matches_f16c) {
  if (!__builtin_cpu_supports("f16c")) return;
  Rng rng(7);
  int bad = 0;
  for (int i = 0; i < 2000000; ++i) {
    uint32_t bits = rng.next() ^ (rng.next() << 16);
    if (i % 2) bits = (bits & 0x87ffffffu) | 0x30000000u;  // bias toward the fp16 range
    float f;
    std::memcpy(&f, &bits, 4);
    if (std::isnan(f)) continue;
    bad += f32_to_f16(f) != hw_f32_to_f16(f);
  }
  for (uint32_t h = 0; h < 65536; ++h) bad += !same_float(f16_to_f32((uint16_t)h), hw_f16_to_f32((uint16_t)h));
  CHECK_EQ(bad, 0);
}

// ---- pack_matrix ------------------------------------------------------------------------------
TEST(pack_matrix_strided) {
  Rng rng(1);
  for (int K : {1, 5, 64}) for (int N : {1, 31, 32, 33, 70}) {
    std::vector<uint16_t> w(K * N), wt(K * N);  // w: [K, N]; wt: the same matrix stored [N, K]
    for (int k = 0; k < K; ++k) for (int n = 0; n < N; ++n) wt[n * K + k] = w[k * N + n] = (uint16_t)rng.next();
    std::vector<uint16_t> a(packed_elems(K, N), 0xdead), b(packed_elems(K, N), 0xbeef);
    pack_matrix(w.data(), K, N, N, 1, a.data());
    pack_matrix(wt.data(), K, N, 1, K, b.data());
    CHECK(a == b);
    const int np = (N + kPanel - 1) / kPanel;
    int bad = 0;
    for (int p = 0; p < np; ++p) for (int k = 0; k < K; ++k) for (int j = 0; j < kPanel; ++j) {
      const int n = p * kPanel + j;
      bad += a[((size_t)p * K + k) * kPanel + j] != (n < N ? w[k * N + n] : 0);
    }
    CHECK_EQ(bad, 0);
  }
}

// ---- gemm -------------------------------------------------------------------------------------
static void gemm_case(const KernelTable& kt, int M, int K, int N, WDType dt, bool acc, int p_begin, int p_end) {
  Rng rng(M * 1000003 + K * 1009 + N * 7 + (int)dt * 3 + acc);
  std::vector<uint16_t> w(K * N);
  for (auto& v : w) v = to_w(rng.uniform(), dt);
  std::vector<uint16_t, std::allocator<uint16_t>> packed(packed_elems(K, N) + 32);
  uint16_t* pk = packed.data() + ((64 - ((uintptr_t)packed.data() & 63)) & 63) / 2;  // 64-byte align
  pack_matrix(w.data(), K, N, N, 1, pk);
  PackedMatrix pm{dt, K, N, (N + kPanel - 1) / kPanel, pk};
  const int ldx = K + 3, ldy = N + 5;
  std::vector<float> x((size_t)M * ldx);
  for (auto& v : x) v = rng.uniform();
  std::vector<float> y0((size_t)M * ldy);
  for (auto& v : y0) v = rng.uniform(-4.f, 4.f);
  std::vector<float> yr = y0, yt = y0;
  reference_kernels().gemm(x.data(), ldx, pm, yr.data(), ldy, M, p_begin, p_end, acc);
  kt.gemm(x.data(), ldx, pm, yt.data(), ldy, M, p_begin, p_end, acc);
  int bad = 0;
  for (int m = 0; m < M; ++m) for (int c = 0; c < ldy; ++c) {
    const size_t i = (size_t)m * ldy + c;
    const bool inside = c < N && c >= p_begin * kPanel && c < p_end * kPanel;
    if (!inside) { bad += yt[i] != y0[i]; continue; }  // never written
    double sa = 0;
    for (int k = 0; k < K; ++k) sa += std::fabs(x[(size_t)m * ldx + k] * from_w(w[k * N + c], dt));
    const double tol = 2e-6 + 1e-5 * sa + (acc ? 1e-6 * std::fabs(y0[i]) : 0);
    if (!(std::fabs(yt[i] - yr[i]) <= tol)) {
      if (bad < 3) std::printf("  %s gemm M=%d K=%d N=%d dt=%d acc=%d [%d,%d]: %g vs %g\n", kt.name, M, K, N, (int)dt, acc, m, c, yt[i], yr[i]);
      ++bad;
    }
  }
  CHECK_EQ(bad, 0);
}

TEST(gemm_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (int M : {1, 2, 3, 7, 12, 13, 33, 100})
      for (int K : {16, 64, 576, 100, 1536})
        for (int N : {1, 31, 32, 33, 96, 960})
          for (WDType dt : {WDType::kF16, WDType::kBF16})
            for (bool acc : {false, true}) {
              if (M * K * N > 2000000 && (acc || M != 100)) continue;  // bound the scalar reference's time
              const int np = (N + kPanel - 1) / kPanel;
              gemm_case(*kt, M, K, N, dt, acc, 0, np);
              if (np >= 3 && M <= 13) gemm_case(*kt, M, K, N, dt, acc, 1, np - 1);  // panel sub-range
              if (np >= 2 && M <= 13) gemm_case(*kt, M, K, N, dt, acc, np - 1, np);  // tail panel alone
            }
}

// Batch invariance (kernels_avx512.cc): a row's output is bit-identical for every M it is computed
// with (decode GEMV, one row block, the k-blocked prefill), wherever it sits, for any panel split.
TEST(gemm_rows_are_bit_identical_for_every_m) {
  for (const KernelTable* kt : supported_kernels())
    for (int K : {576, 1536})
      for (WDType dt : {WDType::kF16, WDType::kBF16}) {
        const int N = 200, total = 40;
        Rng rng(K + (int)dt);
        std::vector<uint16_t> w(K * N);
        for (auto& v : w) v = to_w(rng.uniform(), dt);
        std::vector<uint16_t> packed(packed_elems(K, N) + 32);
        uint16_t* pk = packed.data() + ((64 - ((uintptr_t)packed.data() & 63)) & 63) / 2;
        pack_matrix(w.data(), K, N, N, 1, pk);
        PackedMatrix pm{dt, K, N, (N + kPanel - 1) / kPanel, pk};
        std::vector<float> x((size_t)total * K);
        for (auto& v : x) v = rng.uniform();
        std::vector<float> full((size_t)total * N);
        kt->gemm(x.data(), K, pm, full.data(), N, total, 0, pm.n_panels, false);
        int bad = 0;
        for (int M : {1, 2, 3, 4, 5, 12, 13, 25})
          for (int row0 : {0, total - M}) {
            std::vector<float> y((size_t)M * N);
            const int mid = pm.n_panels / 2 + 1;  // an odd split: the GEMV's panel groups shift
            kt->gemm(x.data() + (size_t)row0 * K, K, pm, y.data(), N, M, 0, mid, false);
            kt->gemm(x.data() + (size_t)row0 * K, K, pm, y.data(), N, M, mid, pm.n_panels, false);
            bad += std::memcmp(y.data(), full.data() + (size_t)row0 * N, y.size() * sizeof(float)) != 0;
          }
        if (bad) std::printf("  %s K=%d dt=%d: %d row sets differ from the M=%d run\n", kt->name, K, (int)dt, bad, total);
        CHECK_EQ(bad, 0);
      }
}

// ---- KV store + attention ---------------------------------------------------------------------
struct Cache {
  std::vector<uint8_t> k, v;
  std::vector<int32_t> table;
  PagedKV kv;
};

static Cache make_cache(KVType type, int block_len, int kv_heads, int head_dim, int max_len) {
  Cache c;
  const int n_blocks = (max_len + block_len - 1) / block_len + 2;
  const size_t es = type == KVType::kF32 ? 4 : type == KVType::kF16 ? 2 : 1;
  const int64_t head_stride = (int64_t)block_len * head_dim + 8;  // padded: strides are honoured
  const int64_t block_stride = kv_heads * head_stride + 24;
  c.k.assign(n_blocks * block_stride * es, 0);
  c.v.assign(n_blocks * block_stride * es, 0);
  for (int i = 0; i < n_blocks - 2; ++i) c.table.push_back((i * 5 + 3) % n_blocks);  // scrambled
  c.kv.k_base = c.k.data();
  c.kv.v_base = c.v.data();
  c.kv.block_stride = block_stride;
  c.kv.head_stride = head_stride;
  c.kv.block_table = c.table.data();
  c.kv.block_len = block_len;
  c.kv.type = type;
  if (type == KVType::kI8) { c.kv.k_scale = 0.013f; c.kv.k_zp = 0.21f; c.kv.v_scale = 0.009f; c.kv.v_zp = -0.17f; }
  return c;
}

static void attention_case(const KernelTable& kt, KVType type, int start_pos, int n, int block_len, int heads,
                           int kv_heads, int head_dim, int window = 0, float softcap = 0.f) {
  Rng rng(start_pos * 31 + n * 17 + block_len + heads * 5 + head_dim * 3 + (int)type + window);
  const int total = start_pos + n;
  Cache ref = make_cache(type, block_len, kv_heads, head_dim, total);
  const int ldkv = kv_heads * head_dim + 4;
  std::vector<float> k((size_t)total * ldkv), v((size_t)total * ldkv);
  for (auto& f : k) f = rng.uniform(-1.5f, 1.5f);  // int8 range covers ~[-1.45, 1.87]: some clamping
  for (auto& f : v) f = rng.uniform(-1.2f, 1.2f);
  reference_kernels().kv_store(k.data(), v.data(), ldkv, start_pos, 0, kv_heads, head_dim, ref.kv);
  Cache tst = ref;  // same history; the new n tokens written by each table's kv_store
  tst.kv.k_base = tst.k.data();
  tst.kv.v_base = tst.v.data();
  tst.kv.block_table = tst.table.data();
  const float* kn = k.data() + (size_t)start_pos * ldkv;
  const float* vn = v.data() + (size_t)start_pos * ldkv;
  reference_kernels().kv_store(kn, vn, ldkv, n, start_pos, kv_heads, head_dim, ref.kv);
  kt.kv_store(kn, vn, ldkv, n, start_pos, kv_heads, head_dim, tst.kv);
  CHECK(ref.k == tst.k);
  CHECK(ref.v == tst.v);

  const int ldq = heads * head_dim + 3;
  std::vector<float> q((size_t)n * ldq);
  for (auto& f : q) f = rng.uniform(-2.f, 2.f);
  AttnParams ap;
  ap.scale = 1.f / std::sqrt((float)head_dim);
  ap.window = window;
  ap.softcap = softcap;
  std::vector<float> o_ref((size_t)n * ldq, 7.f), o_tst((size_t)n * ldq, 7.f), scratch(total + 16);
  // Heads [1, heads) in the test (head 0 must stay untouched), all heads in the reference.
  reference_kernels().attention(q.data(), ldq, n, start_pos, heads, kv_heads, head_dim, ref.kv, ap, o_ref.data(),
                                ldq, 0, heads, scratch.data());
  kt.attention(q.data(), ldq, n, start_pos, heads, kv_heads, head_dim, ref.kv, ap, o_tst.data(), ldq, 1, heads,
               scratch.data());
  int bad = 0;
  for (int i = 0; i < n; ++i) for (int c = 0; c < ldq; ++c) {
    const size_t idx = (size_t)i * ldq + c;
    if (c < head_dim || c >= heads * head_dim) { bad += o_tst[idx] != 7.f; continue; }
    if (!(std::fabs(o_tst[idx] - o_ref[idx]) <= 2e-5 + 1e-5 * std::fabs(o_ref[idx]))) {
      if (bad < 3) std::printf("  %s attention type=%d sp=%d n=%d bl=%d h=%d/%d hd=%d w=%d cap=%g [%d,%d]: %g vs %g\n",
                               kt.name, (int)type, start_pos, n, block_len, heads, kv_heads, head_dim, window, softcap,
                               i, c, o_tst[idx], o_ref[idx]);
      ++bad;
    }
  }
  CHECK_EQ(bad, 0);
}

TEST(attention_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (KVType type : {KVType::kF16, KVType::kF32, KVType::kI8})
      for (int start_pos : {0, 5, 130})
        for (int n : {1, 3, 4, 7, 16, 17, 64})  // decode rows; the 16-row blocks' edges
          for (int block_len : {16, 128})
            for (auto hk : {std::pair<int, int>{9, 3}, {4, 4}})
              for (int head_dim : {64, 128, 80, 144, 20})
                attention_case(*kt, type, start_pos, n, block_len, hk.first, hk.second, head_dim);
}

// Sliding windows (narrower and wider than a 16-key tile, crossing KV blocks) and Gemma 2's
// score soft-capping, each against the reference; the windowed reference itself is checked
// against full attention over only the window's keys in test_model_forward.
TEST(attention_window_softcap_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (KVType type : {KVType::kF16, KVType::kI8})
      for (int start_pos : {0, 5, 130})
        for (int n : {1, 3, 16, 40})
          for (int window : {1, 3, 16, 37, 200})
            for (float cap : {0.f, 2.f})
              attention_case(*kt, type, start_pos, n, 16, 4, 2, 64, window, cap);
}

// ---- elementwise ------------------------------------------------------------------------------
TEST(rmsnorm_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (int d : {1, 15, 16, 17, 64, 576, 1000}) {
      Rng rng(d);
      const int M = 3, ld = d + 5;
      std::vector<float> x(M * ld), w(d), yr(M * ld, 9.f), yt(M * ld, 9.f);
      for (auto& f : x) f = rng.uniform(-3.f, 3.f);
      for (auto& f : w) f = rng.uniform(0.5f, 1.5f);
      reference_kernels().rmsnorm(x.data(), ld, w.data(), 1e-5f, M, d, yr.data(), ld);
      kt->rmsnorm(x.data(), ld, w.data(), 1e-5f, M, d, yt.data(), ld);
      int bad = 0;
      for (int i = 0; i < M * ld; ++i) bad += !(std::fabs(yt[i] - yr[i]) <= 1e-5 * (1 + std::fabs(yr[i])));
      CHECK_EQ(bad, 0);
    }
}

TEST(rope_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (auto dims : {std::pair<int, int>{64, 64}, {128, 128}, {64, 32}, {80, 80}, {20, 12}}) {
      const int head_dim = dims.first, rot = dims.second, heads = 3, T = 4, ld = heads * head_dim + 2;
      Rng rng(head_dim + rot);
      std::vector<float> x(T * ld), inv(rot / 2);
      for (auto& f : x) f = rng.uniform(-2.f, 2.f);
      for (int i = 0; i < rot / 2; ++i) inv[i] = std::pow(10000.f, -2.f * i / rot);
      const int32_t pos[T] = {0, 1, 977, 8191};
      std::vector<float> xr = x, xt = x;
      reference_kernels().rope(xr.data(), ld, T, heads, head_dim, rot, pos, inv.data());
      kt->rope(xt.data(), ld, T, heads, head_dim, rot, pos, inv.data());
      int bad = 0;
      for (size_t i = 0; i < x.size(); ++i) bad += !(std::fabs(xt[i] - xr[i]) <= 1e-5 * (1 + std::fabs(xr[i])));
      CHECK_EQ(bad, 0);
    }
}

TEST(silu_mul_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (int n : {1, 15, 16, 17, 1536, 1537}) {
      Rng rng(n);
      std::vector<float> g(n), u(n), r(n), t(n);
      for (int i = 0; i < n; ++i) { g[i] = rng.uniform(-20.f, 20.f) * (i % 7 == 0 ? 6.f : 1.f); u[i] = rng.uniform(-2.f, 2.f); }
      reference_kernels().silu_mul(g.data(), u.data(), r.data(), n);
      kt->silu_mul(g.data(), u.data(), t.data(), n);
      int bad = 0;
      for (int i = 0; i < n; ++i) bad += !(std::fabs(t[i] - r[i]) <= 1e-6 * std::fabs(u[i]) + 2e-6 * std::fabs(r[i]));
      CHECK_EQ(bad, 0);
    }
}

TEST(gelu_mul_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (int n : {1, 15, 16, 17, 1536, 1537}) {
      Rng rng(n + 3);
      std::vector<float> g(n), u(n), r(n), t(n);
      for (int i = 0; i < n; ++i) { g[i] = rng.uniform(-8.f, 8.f) * (i % 7 == 0 ? 6.f : 1.f); u[i] = rng.uniform(-2.f, 2.f); }
      reference_kernels().gelu_mul(g.data(), u.data(), r.data(), n);
      kt->gelu_mul(g.data(), u.data(), t.data(), n);
      int bad = 0;
      for (int i = 0; i < n; ++i)
        bad += !(std::fabs(t[i] - r[i]) <= 2e-6 * std::fabs(u[i]) * (1 + std::fabs(g[i])) + 2e-6 * std::fabs(r[i]));
      CHECK_EQ(bad, 0);
    }
}

TEST(softcap_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (int n : {1, 15, 16, 17, 1537}) {
      Rng rng(n + 5);
      std::vector<float> r(n);
      for (int i = 0; i < n; ++i) r[i] = rng.uniform(-40.f, 40.f) * (i % 7 == 0 ? 8.f : 1.f);
      std::vector<float> t = r;
      reference_kernels().softcap(r.data(), n, 30.f);
      kt->softcap(t.data(), n, 30.f);
      int bad = 0;
      for (int i = 0; i < n; ++i) bad += !(std::fabs(t[i] - r[i]) <= 2e-6f * 30.f);
      CHECK_EQ(bad, 0);
    }
}

TEST(to_f32_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (WDType dt : {WDType::kF16, WDType::kBF16})
      for (int n : {1, 15, 16, 17, 576, 65536}) {
        std::vector<uint16_t> src(n);
        for (int i = 0; i < n; ++i) src[i] = (uint16_t)(i * 40503u + 17);  // every bit pattern class
        std::vector<float> r(n), t(n);
        reference_kernels().to_f32(src.data(), dt, r.data(), n);
        kt->to_f32(src.data(), dt, t.data(), n);
        int bad = 0;
        for (int i = 0; i < n; ++i) bad += !same_float(t[i], r[i]);
        CHECK_EQ(bad, 0);
      }
}

TEST(row_max_exp_sum_all_tables) {
  for (const KernelTable* kt : simd_tables())
    for (int n : {1, 15, 16, 17, 1001, 49152}) {
      Rng rng(n + 7);
      std::vector<float> x(n), r(n), t(n);
      for (int i = 0; i < n; ++i) x[i] = rng.uniform(-30.f, 30.f);
      x[(n * 5) / 7] = 41.5f;  // the maximum, anywhere (the tail included)
      const float m = kt->row_max(x.data(), n);
      CHECK_EQ(m, reference_kernels().row_max(x.data(), n));
      CHECK_EQ(m, 41.5f);
      const float sr = reference_kernels().exp_sum(x.data(), n, m, r.data());
      const float st = kt->exp_sum(x.data(), n, m, t.data());
      CHECK(std::fabs(st - sr) <= 1e-5f * sr);
      int bad = 0;
      for (int i = 0; i < n; ++i) bad += !(std::fabs(t[i] - r[i]) <= 2e-7f * r[i] + 1e-30f);
      CHECK_EQ(bad, 0);
      CHECK_EQ(t[(n * 5) / 7], 1.f);  // exp(0) exactly
    }
}

TEST(dispatch) {
  auto all = supported_kernels();
  CHECK(!all.empty());
  CHECK(std::string(all[0]->name) == "ref");
  bool found = false;
  for (auto* t : all) found |= t == &best_kernels();
  CHECK(found);
  std::printf("  best: %s; supported:", best_kernels().name);
  for (auto* t : all) std::printf(" %s", t->name);
  std::printf("\n");
}

int main() { return check::run_all(); }
