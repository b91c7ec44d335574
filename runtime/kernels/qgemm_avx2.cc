// AVX2 + FMA quantized GEMM (int4 / int8 weights), for CPUs without AVX-512: each k-row is
// dequantized once in registers (w = q * s - zs, 4 ymm for the panel's 32 columns) and reused by
// MR <= 2 rows (8 accumulators + 4 weights fit the 16 ymm registers). File-local like
// kernels_avx2.cc, reached only via avx2_qkernels().
#include <immintrin.h>

#include "qgemm.h"

namespace turbolm::kernels {
namespace {

constexpr int kRB4 = kQRowBytes(4), kRB8 = kQRowBytes(8);

// One panel k-row as 4 x 8 fp32 (columns 0..7, 8..15, 16..23, 24..31), q values not yet scaled.
template <int BITS>
inline void load_row(const uint8_t* row, __m256 w[4]) {
  if constexpr (BITS == 4) {
    const __m128i r = _mm_loadu_si128((const __m128i*)row);
    const __m256i a = _mm256_cvtepu8_epi32(r), b = _mm256_cvtepu8_epi32(_mm_srli_si128(r, 8));
    const __m256i mask = _mm256_set1_epi32(0xf);
    w[0] = _mm256_cvtepi32_ps(_mm256_and_si256(a, mask));
    w[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b, mask));
    w[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4));
    w[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
  } else {
    const __m128i r0 = _mm_loadu_si128((const __m128i*)row), r1 = _mm_loadu_si128((const __m128i*)(row + 16));
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(r0));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(r0, 8)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(r1));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(r1, 8)));
  }
}

// MR rows x one panel over all of K; writes a full 32-wide tile (row stride ldt).
template <int MR, int BITS>
void micro(const float* x, int ldx, const uint8_t* q, const float* sz, int n_groups, int G, float* t, int ldt) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  __m256 c[MR][4];
  for (int m = 0; m < MR; ++m) for (int j = 0; j < 4; ++j) c[m][j] = _mm256_setzero_ps();
  for (int g = 0; g < n_groups; ++g) {
    const float* s = sz + (size_t)g * kQGroupFloats;
    const uint8_t* qg = q + (size_t)g * G * RB;
    for (int k = 0; k < G; ++k) {
      _mm_prefetch((const char*)(qg + (size_t)(k + 32) * RB), _MM_HINT_T0);
      __m256 w[4];
      load_row<BITS>(qg + (size_t)k * RB, w);
      for (int j = 0; j < 4; ++j) w[j] = _mm256_fmsub_ps(w[j], _mm256_loadu_ps(s + 8 * j), _mm256_loadu_ps(s + 32 + 8 * j));
      for (int m = 0; m < MR; ++m) {
        const __m256 xb = _mm256_broadcast_ss(x + (size_t)m * ldx + (size_t)g * G + k);
        for (int j = 0; j < 4; ++j) c[m][j] = _mm256_fmadd_ps(xb, w[j], c[m][j]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(t + (size_t)m * ldt + 8 * j, c[m][j]);
}

template <int BITS>
void qgemm_t(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
             bool accumulate) {
  using Fn = void (*)(const float*, int, const uint8_t*, const float*, int, int, float*, int);
  static constexpr Fn kFn[3] = {nullptr, micro<1, BITS>, micro<2, BITS>};
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  const int n_groups = w.K / w.group_size;
  alignas(32) float tile[2 * kPanel];
  for (int p = p_begin; p < p_end; ++p) {
    const uint8_t* q = w.q + (size_t)p * w.K * RB;
    const float* sz = w.sz + (size_t)p * n_groups * kQGroupFloats;
    const int cols = w.N - p * kPanel < kPanel ? w.N - p * kPanel : kPanel;
    for (int m = 0; m < M; m += 2) {
      const int rows = M - m < 2 ? M - m : 2;
      kFn[rows](x + (size_t)m * ldx, ldx, q, sz, n_groups, w.group_size, tile, kPanel);
      float* yp = y + (size_t)m * ldy + (size_t)p * kPanel;
      for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j)
          yp[(size_t)r * ldy + j] = accumulate ? yp[(size_t)r * ldy + j] + tile[r * kPanel + j] : tile[r * kPanel + j];
    }
  }
}

void qgemm_avx2(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                bool accumulate) {
  if (w.bits == 4) qgemm_t<4>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
  else qgemm_t<8>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
}

void qgemm_a8_avx2(const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                   bool accumulate) {
  qgemm_a8_via_fp32(qgemm_avx2, x, w, y, ldy, M, p_begin, p_end, accumulate);
}

const QKernelTable kTable{"avx2", qgemm_avx2, reference_qkernels().quantize_acts, qgemm_a8_avx2, false};

}  // namespace

const QKernelTable* avx2_qkernels() { return &kTable; }

}  // namespace turbolm::kernels
