// The quantized GEMM (kernels/qgemm.h): the packed layout round-trips, and every QKernelTable the
// CPU supports matches the reference twin and a dequantize-then-fp64-GEMM oracle over a table of
// shapes (M 1..33 and 100, K of 1..9 groups for several group sizes, N with panel tails), with
// accumulate, row strides and panel sub-ranges.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "check.h"
#include "qweight.h"
#include "test_rng.h"
#include "kernels/qgemm.h"

using namespace turbolm::kernels;

namespace {

std::vector<const QKernelTable*> simd_tables() {
  std::vector<const QKernelTable*> out;
  for (const QKernelTable* t : supported_qkernels())
    if (t != &reference_qkernels()) out.push_back(t);
  return out;
}

// Runs `t` and compares to the oracle (fp64 dequantized GEMM) within a relative bound; returns the
// output for cross-variant checks.
std::vector<float> run_check(const QKernelTable& t, const QWeight& w, const std::vector<float>& x, int M, int ldx,
                             int ldy, bool accumulate, int p_begin, int p_end, const char* what) {
  std::vector<float> y((size_t)M * ldy);
  for (size_t i = 0; i < y.size(); ++i) y[i] = 0.25f * (float)(i % 7) - 0.5f;
  const std::vector<float> y0 = y;
  t.qgemm(x.data(), ldx, w.pm, y.data(), ldy, M, p_begin, p_end, accumulate);
  int bad = 0;
  const int n_begin = p_begin * kPanel, n_end = p_end * kPanel < w.N ? p_end * kPanel : w.N;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < ldy; ++n) {
      const float got = y[(size_t)m * ldy + n];
      if (n < n_begin || n >= n_end) {  // untouched
        bad += got != y0[(size_t)m * ldy + n];
        continue;
      }
      double want = accumulate ? y0[(size_t)m * ldy + n] : 0.0, mag = std::fabs(want);
      for (int k = 0; k < w.K; ++k) {
        const double t2 = (double)x[(size_t)m * ldx + k] * w.w(k, n);
        want += t2;
        mag += std::fabs((double)x[(size_t)m * ldx + k]) * (std::fabs((double)w.q[(size_t)k * w.N + n] * w.s[(size_t)(k / w.G) * w.N + n]) +
                                                           std::fabs(w.z[(size_t)(k / w.G) * w.N + n] * w.s[(size_t)(k / w.G) * w.N + n]));
      }
      if (std::fabs(got - want) > 2e-6 * mag + 1e-6) {
        if (bad < 3)
          std::printf("  %s %s bits=%d M=%d K=%d N=%d G=%d: y[%d,%d] = %.7g, oracle %.7g\n", t.name, what, w.bits, M,
                      w.K, w.N, w.G, m, n, got, want);
        ++bad;
      }
    }
  CHECK_EQ(bad, 0);
  return y;
}

}  // namespace

TEST(qpack_round_trip) {
  for (int bits : {4, 8})
    for (int N : {1, 16, 17, 32, 45, 96}) {
      QWeight w(bits, 64, N, 32, 7 + N);
      int bad = 0;
      for (int k = 0; k < w.K; ++k)
        for (int n = 0; n < N; ++n) {
          bad += qpacked_q(w.pm, k, n) != w.q[(size_t)k * N + n];
          bad += std::fabs(qpacked_dequant(w.pm, k, n) - w.w(k, n)) > 1e-6 * (1 + std::fabs(w.w(k, n)));
        }
      CHECK_EQ(bad, 0);
      // padding columns are zero in q, s and zs
      const int rb = kQRowBytes(bits), cols = N - (w.pm.n_panels - 1) * kPanel;
      if (cols < kPanel) {
        const uint8_t* last = w.pm.q + (size_t)(w.pm.n_panels - 1) * w.K * rb;
        for (int k = 0; k < w.K; ++k)
          for (int j = cols; j < kPanel; ++j) {
            const int v = bits == 8 ? last[k * rb + j] : (j < 16 ? last[k * rb + j] & 0xf : last[k * rb + j - 16] >> 4);
            bad += v != 0;
          }
        CHECK_EQ(bad, 0);
      }
    }
}

TEST(qpack_layout_bytes) {  // the nibble order written down in qgemm.h, byte by byte
  std::vector<uint8_t> q(32);
  for (int j = 0; j < 32; ++j) q[j] = (uint8_t)(j % 16);
  std::vector<float> s(32, 1.f), z(32, 0.f);
  Aligned<uint8_t> qp(qpacked_q_bytes(4, 16, 32));
  Aligned<float> sz(qpacked_sz_floats(16, 32, 16));
  std::vector<uint8_t> q16(16 * 32);
  for (int k = 0; k < 16; ++k) std::memcpy(&q16[k * 32], q.data(), 32);
  std::vector<float> s2(32, 2.f), z2(32, 3.f);
  qpack_matrix(4, 16, 32, 16, q16.data(), 32, s2.data(), z2.data(), 32, qp.get(), sz.get());
  for (int j = 0; j < 16; ++j) CHECK_EQ((int)qp.get()[j], (j % 16) | ((j + 16) % 16) << 4);
  CHECK_EQ(sz.get()[0], 2.f);
  CHECK_EQ(sz.get()[32], 6.f);  // zs = z * s
}

TEST(qpack_errors) {
  std::vector<uint8_t> q(64 * 32, 1);
  std::vector<float> s(4 * 32, 1.f);
  std::vector<uint8_t> qo(64 * 32);
  std::vector<float> so(64 * 64);
  CHECK_THROWS(qpack_matrix(3, 64, 32, 32, q.data(), 32, s.data(), s.data(), 32, qo.data(), so.data()));
  CHECK_THROWS(qpack_matrix(4, 64, 32, 24, q.data(), 32, s.data(), s.data(), 32, qo.data(), so.data()));
  CHECK_THROWS(qpack_matrix(4, 64, 32, 48, q.data(), 32, s.data(), s.data(), 32, qo.data(), so.data()));
  q[5] = 16;
  CHECK_THROWS(qpack_matrix(4, 64, 32, 32, q.data(), 32, s.data(), s.data(), 32, qo.data(), so.data()));
  qpack_matrix(8, 64, 32, 32, q.data(), 32, s.data(), s.data(), 32, qo.data(), so.data());  // fits in 8 bits
}

TEST(qgemm_tables_listed) {
  const auto tables = supported_qkernels();
  CHECK(!tables.empty() && tables[0] == &reference_qkernels());
  std::printf("  quantized tables:");
  for (auto* t : tables) std::printf(" %s", t->name);
  std::printf(" (best: %s)\n", best_qkernels().name);
}

TEST(qgemm_all_variants_vs_reference_and_oracle) {
  struct KG { int K, G; } kgs[] = {{16, 16}, {64, 32}, {192, 64}, {576, 64}, {384, 128}, {96, 32}, {48, 16}};
  const int Ns[] = {1, 17, 32, 33, 70, 96};
  std::vector<int> Ms;
  for (int m = 1; m <= 33; ++m) Ms.push_back(m);
  Ms.push_back(100);
  std::vector<const QKernelTable*> tables = supported_qkernels();
  int cases = 0;
  uint64_t seed = 1;
  for (int bits : {4, 8})
    for (const KG& kg : kgs)
      for (int N : Ns) {
        QWeight w(bits, kg.K, N, kg.G, ++seed);
        // all M for a few shapes, a sample elsewhere (the reference is slow)
        const bool full = (kg.K == 64 || kg.K == 576) && (N == 33 || N == 70);
        for (int M : Ms) {
          if (!full && !(M <= 5 || M == 12 || M == 13 || M == 25 || M == 100)) continue;
          const int ldx = kg.K + (M % 3), ldy = N + (M % 2) * 5;
          Rng r(seed * 131 + M);
          std::vector<float> x((size_t)M * ldx);
          for (auto& v : x) v = r.uniform();
          const bool acc = (M + N) % 2 == 0;
          std::vector<float> ref;
          for (const QKernelTable* t : tables) {
            auto y = run_check(*t, w, x, M, ldx, ldy, acc, 0, w.pm.n_panels, "full");
            if (t == tables[0]) ref = y;
            else {  // vs the reference twin: summation order only
              int bad = 0;
              for (size_t i = 0; i < y.size(); ++i) bad += std::fabs(y[i] - ref[i]) > 1e-4f * (1.f + std::fabs(ref[i]));
              if (bad) std::printf("  %s vs ref: bits=%d M=%d K=%d N=%d: %d mismatches\n", t->name, bits, M, kg.K, N, bad);
              CHECK_EQ(bad, 0);
            }
          }
          // a panel sub-range leaves other columns untouched
          if (w.pm.n_panels >= 2)
            for (const QKernelTable* t : tables) run_check(*t, w, x, M, ldx, ldy, acc, 1, w.pm.n_panels, "sub-range");
          ++cases;
        }
      }
  std::printf("  %d shape cases x %zu tables\n", cases, tables.size());
}

TEST(qgemm_long_k_chunks) {  // K spanning several xsum chunks (> 64 groups) and k blocks
  for (int bits : {4, 8}) {
    QWeight w(bits, 16 * 150, 40, 16, 99 + bits);
    for (int M : {1, 3, 4, 7, 30}) {
      Rng r(M);
      std::vector<float> x((size_t)M * w.K);
      for (auto& v : x) v = r.uniform();
      for (const QKernelTable* t : supported_qkernels()) run_check(*t, w, x, M, w.K, w.N, M % 2, 0, w.pm.n_panels, "longk");
    }
  }
}

// Batch invariance (the contract at the top of qgemm_avx512.cc): a row's output is bit-identical
// whatever M it is computed with, wherever it sits in the batch, and however the panels are split
// over threads -- the engine relies on it for seeded sampling that ignores the batch's makeup.
TEST(qgemm_rows_are_bit_identical_for_every_m) {
  struct KG { int K, G; } kgs[] = {{576, 64}, {16 * 150, 16}, {384, 128}};
  for (int bits : {4, 8})
    for (const KG& kg : kgs) {
      QWeight w(bits, kg.K, 70, kg.G, 7 + bits + kg.G);
      const int total = 40;
      Rng r(kg.K);
      std::vector<float> x((size_t)total * kg.K);
      for (auto& v : x) v = r.uniform();
      for (const QKernelTable* t : supported_qkernels()) {
        std::vector<float> full((size_t)total * w.N);
        t->qgemm(x.data(), kg.K, w.pm, full.data(), w.N, total, 0, w.pm.n_panels, false);
        int bad = 0;
        for (int M : {1, 2, 3, 4, 5, 9, 12, 13, 17, 25}) {
          for (int row0 : {0, total - M}) {
            std::vector<float> y((size_t)M * w.N, 0.f);
            // panels in two ranges, as two threads would split them
            const int mid = w.pm.n_panels / 2;
            t->qgemm(x.data() + (size_t)row0 * kg.K, kg.K, w.pm, y.data(), w.N, M, 0, mid, false);
            t->qgemm(x.data() + (size_t)row0 * kg.K, kg.K, w.pm, y.data(), w.N, M, mid, w.pm.n_panels, false);
            bad += std::memcmp(y.data(), full.data() + (size_t)row0 * w.N, y.size() * sizeof(float)) != 0;
          }
        }
        if (bad) std::printf("  %s bits=%d K=%d G=%d: %d row sets differ from the M=%d run\n", t->name, bits, kg.K, kg.G,
                             bad, total);
        CHECK_EQ(bad, 0);
      }
    }
}

int main() { return check::run_all(); }
