// bf16 dot products (kernels.h "bf16 dot products", act_type bf16): f32_to_bf16 rounds to
// nearest even, pack_bf16_pairs writes the k-pair layout byte by byte, the reference matches an
// fp64 oracle of the bf16-rounded inputs, every table with gemm_bf16 is bit-identical to the
// reference (vdpbf16ps' arithmetic is written down; AMX tiles round in their own order and agree
// to fp32 rounding), and rows do not depend on the batch, bit for bit, in every table.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "check.h"
#include "test_rng.h"
#include "kernels/kernels.h"

using namespace turbolm::kernels;

namespace {

// A random fp16 weight W[K, N] in fp16 panels and in bf16 k-pair panels.
struct BWeight {
  int K, N;
  std::vector<uint16_t> raw, panels, pairs;
  PackedMatrix pm;
  PackedBF16 bm;
  BWeight(int K_, int N_, uint64_t seed) : K(K_), N(N_), raw((size_t)K_ * N_), panels(packed_elems(K_, N_)), pairs(panels.size()) {
    Rng r(seed);
    for (auto& v : raw) v = f32_to_f16(r.uniform() * 0.5f);
    pack_matrix(raw.data(), K, N, N, 1, panels.data());
    pm = PackedMatrix{WDType::kF16, K, N, (N + kPanel - 1) / kPanel, panels.data()};
    pack_bf16_pairs(pm, pairs.data());
    bm = PackedBF16{K, N, pm.n_panels, pairs.data()};
  }
  float wb(int k, int n) const { return bf16_to_f32(f32_to_bf16(f16_to_f32(raw[(size_t)k * N + n]))); }
};

std::vector<const KernelTable*> bf16_tables() {
  std::vector<const KernelTable*> out;
  for (const KernelTable* t : supported_kernels())
    if (t->gemm_bf16) out.push_back(t);
  return out;
}

std::vector<float> run(const KernelTable& t, const BWeight& w, const std::vector<float>& x, int M, int ldx, int ldy,
                       bool acc, int p0, int p1) {
  std::vector<float> y((size_t)M * ldy);
  for (size_t i = 0; i < y.size(); ++i) y[i] = 0.25f * (float)(i % 7) - 0.5f;
  t.gemm_bf16(x.data(), ldx, w.bm, y.data(), ldy, M, p0, p1, acc);
  return y;
}

}  // namespace

TEST(f32_to_bf16_rounds_to_nearest_even) {
  auto bits = [](float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; };
  auto from = [](uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; };
  CHECK_EQ((int)f32_to_bf16(1.0f), 0x3f80);
  CHECK_EQ((int)f32_to_bf16(from(0x3f808000)), 0x3f80);  // a tie: to even (down)
  CHECK_EQ((int)f32_to_bf16(from(0x3f818000)), 0x3f82);  // a tie: to even (up)
  CHECK_EQ((int)f32_to_bf16(from(0x3f808001)), 0x3f81);  // above the tie
  CHECK_EQ((int)f32_to_bf16(-2.5f), (int)(bits(-2.5f) >> 16));
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  CHECK(std::isinf(bf16_to_f32(f32_to_bf16(from(0x7f7fffff)))));  // rounds up past the largest
}

TEST(pack_bf16_pairs_layout) {
  BWeight w(6, 40, 3);
  int bad = 0;
  for (int p = 0; p < w.pm.n_panels; ++p)
    for (int kp = 0; kp < 3; ++kp)
      for (int j = 0; j < kPanel; ++j)
        for (int e = 0; e < 2; ++e) {
          const int n = p * kPanel + j, k = 2 * kp + e;
          const uint16_t got = w.pairs[(((size_t)p * 3 + kp) * kPanel + j) * 2 + e];
          const uint16_t want = n < w.N ? f32_to_bf16(f16_to_f32(w.raw[(size_t)k * w.N + n])) : 0;
          bad += got != want;
        }
  CHECK_EQ(bad, 0);
}

TEST(gemm_bf16_tables_vs_reference_and_oracle) {
  const KernelTable& ref = reference_kernels();
  CHECK(ref.gemm_bf16 != nullptr);
  std::printf("  bf16 tables:");
  for (auto* t : bf16_tables()) std::printf(" %s", t->name);
  std::printf("\n");
  const int Ks[] = {2, 18, 64, 70, 96, 576}, Ns[] = {1, 17, 32, 33, 70, 130};  // AMX: K % 32 == 0
  const int Ms[] = {1, 2, 3, 4, 5, 7, 12, 13, 25, 33, 100};
  int cases = 0;
  uint64_t seed = 5;
  for (int K : Ks)
    for (int N : Ns) {
      BWeight w(K, N, ++seed);
      for (int M : Ms) {
        if (M > 13 && !(K == 576 || N == 70)) continue;
        const int ldx = K + (M % 3), ldy = N + (M % 2) * 3;
        Rng r(seed * 7 + M);
        std::vector<float> x((size_t)M * ldx);
        for (auto& v : x) v = r.uniform();
        const bool acc = (M + N) % 2 == 0;
        const auto want = run(ref, w, x, M, ldx, ldy, acc, 0, w.pm.n_panels);
        int bad = 0;
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < N; ++n) {
            double o = acc ? 0.25 * (double)(((size_t)m * ldy + n) % 7) - 0.5 : 0, mag = std::fabs(o);
            for (int k = 0; k < K; ++k) {
              const double t = (double)bf16_to_f32(f32_to_bf16(x[(size_t)m * ldx + k])) * w.wb(k, n);
              o += t;
              mag += std::fabs(t);
            }
            bad += std::fabs(want[(size_t)m * ldy + n] - o) > 1e-6 * mag + 1e-6;
          }
        CHECK_EQ(bad, 0);
        for (const KernelTable* t : bf16_tables()) {
          if (t == &ref) continue;
          const auto y = run(*t, w, x, M, ldx, ldy, acc, 0, w.pm.n_panels);
          auto same = [&](size_t i, float v) {  // AMX tiles round in their own order: to fp32 rounding
            return t->bf16_tiles ? std::fabs(v - want[i]) <= 1e-5f * (1.f + std::fabs(want[i])) : v == want[i];
          };
          int d = 0;
          for (size_t i = 0; i < y.size(); ++i) d += !same(i, y[i]);
          if (d) std::printf("  %s vs ref K=%d N=%d M=%d: differs\n", t->name, K, N, M);
          CHECK_EQ(d, 0);
          if (w.pm.n_panels >= 2) {  // a sub-range writes its columns only
            const auto ys = run(*t, w, x, M, ldx, ldy, acc, 1, w.pm.n_panels);
            int u = 0;
            for (int m = 0; m < M; ++m)
              for (int n = 0; n < ldy; ++n) {
                const size_t i = (size_t)m * ldy + n;
                u += (n < kPanel || n >= N) ? ys[i] != 0.25f * (float)(i % 7) - 0.5f : !same(i, ys[i]);
              }
            CHECK_EQ(u, 0);
          }
        }
        ++cases;
      }
    }
  std::printf("  %d shape cases\n", cases);
}

TEST(gemm_bf16_rows_are_bit_identical_for_every_m) {
  for (int K : {576, 1536}) {
    BWeight w(K, 70, K);
    const int total = 300;  // past the 256-row passes of the AMX / bf16 kernels
    Rng r(K + 1);
    std::vector<float> x((size_t)total * K);
    for (auto& v : x) v = r.uniform();
    for (const KernelTable* t : bf16_tables()) {
      std::vector<float> full((size_t)total * w.N);
      t->gemm_bf16(x.data(), K, w.bm, full.data(), w.N, total, 0, w.pm.n_panels, false);
      int bad = 0;
      for (int M : {1, 2, 3, 4, 5, 9, 12, 13, 17, 25, 257})
        for (int row0 : {0, total - M}) {
          std::vector<float> y((size_t)M * w.N, 0.f);
          const int mid = w.pm.n_panels / 2;
          t->gemm_bf16(x.data() + (size_t)row0 * K, K, w.bm, y.data(), w.N, M, 0, mid, false);
          t->gemm_bf16(x.data() + (size_t)row0 * K, K, w.bm, y.data(), w.N, M, mid, w.pm.n_panels, false);
          bad += std::memcmp(y.data(), full.data() + (size_t)row0 * w.N, y.size() * sizeof(float)) != 0;
        }
      if (bad) std::printf("  %s K=%d: %d row sets differ\n", t->name, K, bad);
      CHECK_EQ(bad, 0);
    }
  }
}

int main() { return check::run_all(); }
