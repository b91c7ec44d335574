// The AVX512-BF16 table: the AVX-512 table plus gemm_bf16 (act_type bf16) on vdpbf16ps. Compiled
// with AVX-512 F/BW/VL/DQ + BF16 flags; reached only through avx512_bf16_kernels() after dispatch
// checked the CPU (isa.h cpu_has_avx512_bf16).
//
// Arithmetic (kernels.h): x rounded to bf16 once per call into a per-thread buffer (vcvtneps2bf16,
// RNE like the reference's f32_to_bf16), then per output one vdpbf16ps chain in k-pair order,
// resumed from y across k blocks (fp32 to fp32, exact). Every path runs that chain, so a row is
// bit-identical whatever M, its position in the batch and the panel split (batch invariance), and
// bit-identical to the reference.
#include <immintrin.h>

#include <cstdlib>
#include <cstring>

#include "kernels.h"
#include "scratch.h"
#include "tables.h"

namespace turbolm::kernels {
namespace {

inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

constexpr int kPairRow = 2 * kPanel;  // uint16 per k-pair of a panel (128 bytes)

// MR rows x P panels over k-pairs [0, n_kp): xb rows of bf16 (row stride ldb, from the chunk's
// first pair); w the first panel's first pair; acc from y unless `from_zero`.
template <int MR, int P>
void micro(const uint16_t* xb, int ldb, const uint16_t* w, size_t pstride, int n_kp, float* y, int ldy,
           __mmask16 m0, __mmask16 m1, bool from_zero) {
  __m512 c[P][MR][2];
  const bool full = m0 == 0xffff && m1 == 0xffff;
  for (int i = 0; i < P; ++i)
    for (int m = 0; m < MR; ++m) {
      const float* yr = y + (size_t)m * ldy + i * kPanel;
      if (from_zero) c[i][m][0] = c[i][m][1] = _mm512_setzero_ps();
      else if (full) c[i][m][0] = _mm512_loadu_ps(yr), c[i][m][1] = _mm512_loadu_ps(yr + 16);
      else c[i][m][0] = _mm512_maskz_loadu_ps(m0, yr), c[i][m][1] = _mm512_maskz_loadu_ps(m1, yr + 16);
    }
  for (int kp = 0; kp < n_kp; ++kp) {
    for (int i = 0; i < P; ++i) {
      const uint16_t* wp = w + i * pstride + (size_t)kp * kPairRow;
      _mm_prefetch((const char*)(wp + 8 * kPairRow), _MM_HINT_T0);
      _mm_prefetch((const char*)(wp + 8 * kPairRow + 32), _MM_HINT_T0);
      const __m512bh lo = (__m512bh)_mm512_loadu_si512(wp), hi = (__m512bh)_mm512_loadu_si512(wp + 32);
      for (int m = 0; m < MR; ++m) {
        int32_t v;
        std::memcpy(&v, xb + (size_t)m * ldb + 2 * kp, 4);
        const __m512bh xv = (__m512bh)_mm512_set1_epi32(v);
        c[i][m][0] = _mm512_dpbf16_ps(c[i][m][0], lo, xv);
        c[i][m][1] = _mm512_dpbf16_ps(c[i][m][1], hi, xv);
      }
    }
  }
  for (int i = 0; i < P; ++i)
    for (int m = 0; m < MR; ++m) {
      float* yr = y + (size_t)m * ldy + i * kPanel;
      if (full) {
        _mm512_storeu_ps(yr, c[i][m][0]);
        _mm512_storeu_ps(yr + 16, c[i][m][1]);
      } else {
        _mm512_mask_storeu_ps(yr, m0, c[i][m][0]);
        _mm512_mask_storeu_ps(yr + 16, m1, c[i][m][1]);
      }
    }
}

using MicroFn = void (*)(const uint16_t*, int, const uint16_t*, size_t, int, float*, int, __mmask16, __mmask16, bool);
constexpr int kMR = 12, kSmallM = 4, kNC = 16, kKC = 128;  // rows, rows at once, panels, k-pairs per block

void gemm_bf16_rows(const float* x, int ldx, const PackedBF16& w, float* y, int ldy, int M, int p_begin, int p_end,
                    bool accumulate) {
  static constexpr MicroFn kOne[kMR + 1] = {nullptr,      micro<1, 1>,  micro<2, 1>,  micro<3, 1>, micro<4, 1>,
                                            micro<5, 1>,  micro<6, 1>,  micro<7, 1>,  micro<8, 1>, micro<9, 1>,
                                            micro<10, 1>, micro<11, 1>, micro<12, 1>};
  static constexpr MicroFn kWide[kSmallM + 1] = {nullptr, micro<1, 4>, micro<2, 2>, micro<3, 1>, micro<4, 1>};
  static constexpr int kP[kSmallM + 1] = {0, 4, 2, 1, 1};
  const int K = w.K, n_kp = K / 2, ldb = (K + 31) / 32 * 32;
  thread_local Scratch scratch;
  uint16_t* xb = scratch.get<uint16_t>((size_t)M * ldb);
  if (xb == nullptr) return reference_kernels().gemm_bf16(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
  for (int m = 0; m < M; ++m) {  // x rounded to bf16, RNE
    const float* xr = x + (size_t)m * ldx;
    uint16_t* br = xb + (size_t)m * ldb;
    int k = 0;
    for (; k + 16 <= K; k += 16) _mm256_storeu_si256((__m256i*)(br + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(xr + k)));
    if (k < K) {
      const __mmask16 mk = tail_mask(K - k);
      _mm256_mask_storeu_epi16(br + k, mk, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, xr + k)));
    }
  }
  const size_t pstride = (size_t)n_kp * kPairRow;
  const int full_end = w.N / kPanel < p_end ? w.N / kPanel : p_end;
  auto call = [&](MicroFn fn, int m, int p, int kp0, int nkp, __mmask16 m0, __mmask16 m1) {
    fn(xb + (size_t)m * ldb + 2 * kp0, ldb, w.data + (size_t)p * pstride + (size_t)kp0 * kPairRow, pstride, nkp,
       y + (size_t)m * ldy + (size_t)p * kPanel, ldy, m0, m1, !accumulate && kp0 == 0);
  };
  if (M <= kSmallM) {  // decode: whole K per call, P panels for independent chains
    int p = p_begin;
    for (; p + kP[M] <= full_end; p += kP[M]) call(kWide[M], 0, p, 0, n_kp, 0xffff, 0xffff);
    for (; p < p_end; ++p) call(kOne[M], 0, p, 0, n_kp, tail_mask(w.N - p * kPanel), tail_mask(w.N - p * kPanel - 16));
    return;
  }
  const int n_blocks = (M + kMR - 1) / kMR;
  for (int p0 = p_begin; p0 < p_end; p0 += kNC) {
    const int p1 = p_end - p0 < kNC ? p_end : p0 + kNC;
    for (int kp0 = 0; kp0 < n_kp; kp0 += kKC) {
      const int nkp = n_kp - kp0 < kKC ? n_kp - kp0 : kKC;
      int m = 0;
      for (int b = 0; b < n_blocks; ++b) {
        const int rows = (M - m + (n_blocks - b) - 1) / (n_blocks - b);
        for (int p = p0; p < p1; ++p)
          call(kOne[rows], m, p, kp0, nkp, tail_mask(w.N - p * kPanel), tail_mask(w.N - p * kPanel - 16));
        m += rows;
      }
    }
  }
}

void gemm_bf16_avx512(const float* x, int ldx, const PackedBF16& w, float* y, int ldy, int M, int p_begin,
                      int p_end, bool accumulate) {
  if (M <= 0 || p_begin >= p_end) return;
  for_row_passes(M, [&](int r, int rows) {  // bounds the per-thread bf16 copy of x
    gemm_bf16_rows(x + (size_t)r * ldx, ldx, w, y + (size_t)r * ldy, ldy, rows, p_begin, p_end, accumulate);
  });
}

}  // namespace

const KernelTable* avx512_bf16_kernels() {
  static const KernelTable t = [] {
    KernelTable k = *avx512_kernels();
    k.name = "avx512_bf16";
    k.gemm_bf16 = gemm_bf16_avx512;
    return k;
  }();
  return &t;
}

}  // namespace turbolm::kernels
