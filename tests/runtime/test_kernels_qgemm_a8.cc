// The int8-activation path of the quantized GEMM (kernels/qgemm.h, "int8 activations"):
// - every table's quantize_acts gives the reference's bits, and the reference follows the written
//   definition;
// - the reference qgemm_a8 matches an fp64 oracle of the same definition;
// - every table with int8 dot products is bit-identical to the reference given the same QActs, and
//   the fp32 emulations agree to rounding;
// - rows are bit-identical whatever M, position in the batch and panel split (batch invariance);
// - the int8 product stays close to the fp32-activation product (the quantization error is small).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "check.h"
#include "qweight.h"
#include "test_rng.h"
#include "kernels/qgemm.h"

using namespace turbolm::kernels;

namespace {

// Quantized activations with their own storage.
// Quantized activations with their own storage, in blocks of B = act_block(G).
struct Acts {
  int M, K, B, ldq, ldg;
  std::vector<int8_t> q;
  std::vector<float> a, sum;
  Acts(int M_, int K_, int G)
      : M(M_), K(K_), B(act_block(G)), ldq((int)qacts_ldq(K_)), ldg(K_ / B + 1), q((size_t)M_ * ldq),
        a((size_t)M_ * ldg), sum(a.size()) {}
  void quantize(const QKernelTable& t, const float* x, int ldx) {
    t.quantize_acts(x, ldx, M, K, B, q.data(), ldq, a.data(), sum.data(), ldg);
  }
  QActs view(int row0 = 0) const {
    return QActs{K, B, q.data() + (size_t)row0 * ldq, ldq, a.data() + (size_t)row0 * ldg, sum.data() + (size_t)row0 * ldg, ldg};
  }
};

// Activations like a transformer's: mostly small, a few outlier channels, some all-zero groups.
std::vector<float> make_x(int M, int K, int ldx, uint64_t seed) {
  Rng r(seed);
  std::vector<float> x((size_t)M * ldx, 0.f);
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; ++k) {
      float v = r.uniform();
      if (k % 37 == 5) v *= 20.f;        // outlier channel
      if ((m + k / 16) % 11 == 3) v = 0.f;  // zero runs (whole groups at G = 16)
      x[(size_t)m * ldx + k] = v;
    }
  return x;
}

// fp64 oracle of qgemm.h's definition: sum over blocks j of s a sum_k q xq - zs xsum (g = j B / G).
// *mag: the sum of the terms' magnitudes, for a rounding bound under cancellation.
double oracle(const QWeight& w, const Acts& x, int m, int n, double* mag) {
  double acc = 0;
  *mag = 0;
  for (int j = 0; j < w.K / x.B; ++j) {
    const size_t gi = (size_t)(j * x.B / w.G) * w.N + n;
    double c = 0;
    for (int k = j * x.B; k < (j + 1) * x.B; ++k) c += (double)w.q[(size_t)k * w.N + n] * x.q[(size_t)m * x.ldq + k];
    const double t1 = c * w.s[gi] * x.a[(size_t)m * x.ldg + j], t2 = (double)w.z[gi] * w.s[gi] * x.sum[(size_t)m * x.ldg + j];
    acc += t1 - t2;
    *mag += std::fabs(t1) + std::fabs(t2);
  }
  return acc;
}

// The fp32 emulation (qgemm_a8_via_fp32) computes sum_k (xq * a) * (q * s - zs) in fp32: the
// definition up to fp32 rounding of the terms' magnitudes.
double emul_tol(const QWeight& w, const Acts& x, int m, int n) {
  double mag = 0;
  for (int j = 0; j < w.K / x.B; ++j) {
    const size_t gi = (size_t)(j * x.B / w.G) * w.N + n;
    for (int k = j * x.B; k < (j + 1) * x.B; ++k)
      mag += std::abs(x.q[(size_t)m * x.ldq + k]) * x.a[(size_t)m * x.ldg + j] *
             (w.q[(size_t)k * w.N + n] * (double)w.s[gi] + std::fabs((double)w.z[gi] * w.s[gi]));
  }
  return 1e-5 * mag + 1e-6;
}

std::vector<float> run(const QKernelTable& t, const QWeight& w, const Acts& x, int M, int ldy, bool acc, int p0,
                       int p1) {
  std::vector<float> y((size_t)M * ldy);
  for (size_t i = 0; i < y.size(); ++i) y[i] = 0.25f * (float)(i % 7) - 0.5f;
  t.qgemm_a8(x.view(), w.pm, y.data(), ldy, M, p0, p1, acc);
  return y;
}

}  // namespace

TEST(quantize_acts_definition_and_tables) {
  const QKernelTable& ref = reference_qkernels();
  for (int G : {16, 32, 48, 64, 128})
    for (int M : {1, 5, 13}) {
      const int K = G * 3, ldx = K + 3;
      const auto x = make_x(M, K, ldx, G * 7 + M);
      Acts r(M, K, G);
      CHECK_EQ(r.B, G % 32 ? G : 32);  // qgemm.h act_block
      const int B = r.B;
      r.quantize(ref, x.data(), ldx);
      int bad = 0;
      for (int m = 0; m < M; ++m)
        for (int g = 0; g < K / B; ++g) {
          double amax = 0, sum = 0;
          for (int k = g * B; k < (g + 1) * B; ++k) {
            amax = std::fmax(amax, std::fabs(x[(size_t)m * ldx + k]));
            sum += x[(size_t)m * ldx + k];
          }
          bad += std::fabs(r.a[(size_t)m * r.ldg + g] - amax / 127) > 1e-7 * amax;
          int isum = 0;
          for (int k = g * B; k < (g + 1) * B; ++k) {
            const double want = amax > 0 ? x[(size_t)m * ldx + k] * 127 / amax : 0;
            const int q = r.q[(size_t)m * r.ldq + k];
            bad += q < -127 || q > 127 || std::fabs(q - want) > 0.5 + 1e-4;
            isum += q;
          }
          bad += r.sum[(size_t)m * r.ldg + g] != r.a[(size_t)m * r.ldg + g] * (float)isum;  // the quantized x's sum
          bad += std::fabs(r.sum[(size_t)m * r.ldg + g] - sum) > 0.5 * B * amax / 127 + 1e-5;
        }
      CHECK_EQ(bad, 0);
      for (const QKernelTable* t : supported_qkernels()) {
        Acts o(M, K, G);
        o.quantize(*t, x.data(), ldx);
        int diff = 0;
        for (int m = 0; m < M; ++m) {
          diff += std::memcmp(&o.q[(size_t)m * o.ldq], &r.q[(size_t)m * r.ldq], K) != 0;
          for (int g = 0; g < K / B; ++g) {  // bit for bit
            diff += o.a[(size_t)m * o.ldg + g] != r.a[(size_t)m * r.ldg + g];
            diff += o.sum[(size_t)m * o.ldg + g] != r.sum[(size_t)m * r.ldg + g];
          }
        }
        if (diff) std::printf("  %s quantize_acts G=%d M=%d: %d differences from ref\n", t->name, G, M, diff);
        CHECK_EQ(diff, 0);
      }
    }
}

TEST(qgemm_a8_all_tables_vs_reference_and_oracle) {
  struct KG { int K, G; } kgs[] = {{16, 16}, {64, 32}, {192, 64}, {576, 64}, {384, 128}, {96, 32}, {576, 576},
                                   {144, 48}};
  const int Ns[] = {1, 17, 32, 33, 70, 96};
  const int Ms[] = {1, 2, 3, 4, 5, 7, 12, 13, 16, 25, 33};
  const QKernelTable& ref = reference_qkernels();
  int cases = 0;
  uint64_t seed = 3;
  for (int bits : {4, 8})
    for (const KG& kg : kgs)
      for (int N : Ns) {
        QWeight w(bits, kg.K, N, kg.G, ++seed);
        for (int M : Ms) {
          if (N != 33 && N != 70 && M > 5 && M != 13 && M != 33) continue;  // the reference is slow
          const int ldx = kg.K + (M % 3), ldy = N + (M % 2) * 5;
          const auto x = make_x(M, kg.K, ldx, seed * 17 + M);
          Acts a(M, kg.K, kg.G);
          a.quantize(ref, x.data(), ldx);
          const bool acc = (M + N) % 2 == 0;
          const auto want = run(ref, w, a, M, ldy, acc, 0, w.pm.n_panels);
          int bad = 0;
          for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n) {
              const double y0 = 0.25 * (double)(((size_t)m * ldy + n) % 7) - 0.5;
              double mag;
              const double o = (acc ? y0 : 0) + oracle(w, a, m, n, &mag);
              bad += std::fabs(want[(size_t)m * ldy + n] - o) > 1e-6 * (mag + std::fabs(o)) + 1e-6;
            }
          if (bad) std::printf("  ref vs oracle bits=%d M=%d K=%d N=%d G=%d: %d\n", bits, M, kg.K, N, kg.G, bad);
          CHECK_EQ(bad, 0);
          for (const QKernelTable* t : supported_qkernels()) {
            if (t == &ref) continue;
            const auto y = run(*t, w, a, M, ldy, acc, 0, w.pm.n_panels);
            int d = 0;
            if (t->int8_dot) d = std::memcmp(y.data(), want.data(), y.size() * sizeof(float)) != 0;
            else
              for (int m = 0; m < M; ++m)
                for (int n = 0; n < N; ++n) d += std::fabs(y[(size_t)m * ldy + n] - want[(size_t)m * ldy + n]) > emul_tol(w, a, m, n);
            if (d) std::printf("  %s vs ref bits=%d M=%d K=%d N=%d G=%d: differs\n", t->name, bits, M, kg.K, N, kg.G);
            CHECK_EQ(d, 0);
            if (w.pm.n_panels >= 2) {  // a sub-range writes its columns only
              const auto ys = run(*t, w, a, M, ldy, acc, 1, w.pm.n_panels);
              int u = 0;
              for (int m = 0; m < M; ++m)
                for (int n = 0; n < ldy; ++n) {
                  const size_t i = (size_t)m * ldy + n;
                  const float y0 = 0.25f * (float)(i % 7) - 0.5f;
                  if (n < kPanel || n >= N) u += ys[i] != y0;
                  else u += t->int8_dot ? ys[i] != want[i] : std::fabs(ys[i] - want[i]) > emul_tol(w, a, m, n);
                }
              CHECK_EQ(u, 0);
            }
          }
          ++cases;
        }
      }
  std::printf("  %d shape cases\n", cases);
}

TEST(qgemm_a8_rows_are_bit_identical_for_every_m) {
  struct KG { int K, G; } kgs[] = {{576, 64}, {16 * 150, 16}, {384, 128}, {576, 576}};
  for (int bits : {4, 8})
    for (const KG& kg : kgs) {
      QWeight w(bits, kg.K, 70, kg.G, 11 + bits + kg.G);
      const int total = 300;  // past the 256-row passes of the AMX / bf16 kernels
      const auto x = make_x(total, kg.K, kg.K, kg.K + bits);
      for (const QKernelTable* t : supported_qkernels()) {
        Acts a(total, kg.K, kg.G);
        a.quantize(*t, x.data(), kg.K);
        std::vector<float> full((size_t)total * w.N);
        t->qgemm_a8(a.view(), w.pm, full.data(), w.N, total, 0, w.pm.n_panels, false);
        int bad = 0;
        for (int M : {1, 2, 3, 4, 5, 9, 12, 13, 17, 25, 257}) {
          for (int row0 : {0, total - M}) {
            std::vector<float> y((size_t)M * w.N, 0.f);
            const int mid = w.pm.n_panels / 2;  // two threads' panel ranges
            t->qgemm_a8(a.view(row0), w.pm, y.data(), w.N, M, 0, mid, false);
            t->qgemm_a8(a.view(row0), w.pm, y.data(), w.N, M, mid, w.pm.n_panels, false);
            bad += std::memcmp(y.data(), full.data() + (size_t)row0 * w.N, y.size() * sizeof(float)) != 0;
          }
        }
        if (bad) std::printf("  %s bits=%d K=%d G=%d: %d row sets differ\n", t->name, bits, kg.K, kg.G, bad);
        CHECK_EQ(bad, 0);
      }
    }
}

TEST(qgemm_a8_close_to_fp32_activations) {  // the price of quantizing x, on outlier-laden rows
  for (int bits : {4, 8}) {
    QWeight w(bits, 576, 96, 64, 5 + bits);
    const int M = 8;
    const auto x = make_x(M, w.K, w.K, 77);
    const QKernelTable& t = best_qkernels();
    Acts a(M, w.K, w.G);
    a.quantize(t, x.data(), w.K);
    std::vector<float> y8((size_t)M * w.N), y32((size_t)M * w.N);
    t.qgemm_a8(a.view(), w.pm, y8.data(), w.N, M, 0, w.pm.n_panels, false);
    t.qgemm(x.data(), w.K, w.pm, y32.data(), w.N, M, 0, w.pm.n_panels, false);
    double err = 0, norm = 0;
    for (size_t i = 0; i < y8.size(); ++i) {
      err += (y8[i] - y32[i]) * (double)(y8[i] - y32[i]);
      norm += (double)y32[i] * y32[i];
    }
    std::printf("  %s bits=%d: relative error of int8 activations %.2e\n", t.name, bits, std::sqrt(err / norm));
    CHECK(std::sqrt(err / norm) < 5e-2);  // 20x outlier channels in every group
    CHECK(std::sqrt(err / norm) > 0);  // it did quantize
  }
}

int main() { return check::run_all(); }
