// AVX2 + FMA + F16C kernel table, for CPUs without AVX-512. The GEMM (the decode and prefill
// hot path), rmsnorm, to_f32 and the sampler's row_max / exp_sum are vectorized; kv_store,
// attention, rope and silu_mul are the reference functions for now. Like kernels_avx512.cc: file-local, reached only via dispatch.
#include <immintrin.h>
#include <math.h>

#include <cstring>

#include "tables.h"

namespace turbolm::kernels {
namespace {

template <WDType DT>
inline __m256 load8w(const uint16_t* p) {
  const __m128i r = _mm_loadu_si128((const __m128i*)p);
  if constexpr (DT == WDType::kF16) return _mm256_cvtph_ps(r);
  else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(r), 16));
}

// MR rows x one 32-column panel (4 ymm per row); MR <= 3 keeps 12 accumulators + 4 weights.
// Writes a full 32-wide tile to y (row stride ldy): the caller redirects tail panels to a buffer.
template <int MR, WDType DT>
void micro(const float* x, int ldx, const uint16_t* panel, int K, float* y, int ldy) {
  __m256 c[MR][4];
  for (int m = 0; m < MR; ++m) for (int j = 0; j < 4; ++j) c[m][j] = _mm256_setzero_ps();
  for (int k = 0; k < K; ++k) {
    const uint16_t* wp = panel + (size_t)k * kPanel;
    _mm_prefetch((const char*)(wp + 16 * kPanel), _MM_HINT_T0);
    __m256 w[4];
    for (int j = 0; j < 4; ++j) w[j] = load8w<DT>(wp + 8 * j);
    for (int m = 0; m < MR; ++m) {
      const __m256 xb = _mm256_broadcast_ss(x + (size_t)m * ldx + k);
      for (int j = 0; j < 4; ++j) c[m][j] = _mm256_fmadd_ps(xb, w[j], c[m][j]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(y + (size_t)m * ldy + 8 * j, c[m][j]);
}

template <WDType DT>
void gemm_t(const float* x, int ldx, const PackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
            bool accumulate) {
  using Micro = void (*)(const float*, int, const uint16_t*, int, float*, int);
  static constexpr Micro kMicro[4] = {nullptr, micro<1, DT>, micro<2, DT>, micro<3, DT>};
  alignas(32) float tile[3 * kPanel];
  for (int p = p_begin; p < p_end; ++p) {
    const uint16_t* panel = w.data + (size_t)p * w.K * kPanel;
    const int cols = w.N - p * kPanel < kPanel ? w.N - p * kPanel : kPanel;
    for (int m = 0; m < M; m += 3) {
      const int rows = M - m < 3 ? M - m : 3;
      float* yp = y + (size_t)m * ldy + (size_t)p * kPanel;
      if (!accumulate && cols == kPanel) {
        kMicro[rows](x + (size_t)m * ldx, ldx, panel, w.K, yp, ldy);
        continue;
      }
      kMicro[rows](x + (size_t)m * ldx, ldx, panel, w.K, tile, kPanel);
      for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j) yp[(size_t)r * ldy + j] = accumulate ? yp[(size_t)r * ldy + j] + tile[r * kPanel + j] : tile[r * kPanel + j];
    }
  }
}

void gemm_avx2(const float* x, int ldx, const PackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
               bool accumulate) {
  if (w.dtype == WDType::kF16) gemm_t<WDType::kF16>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
  else gemm_t<WDType::kBF16>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

void rmsnorm_avx2(const float* x, int ldx, const float* w, float eps, int M, int d, float* y, int ldy) {
  for (int r = 0; r < M; ++r) {
    const float* xr = x + (size_t)r * ldx;
    float* yr = y + (size_t)r * ldy;
    __m256 s = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= d; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(xr + i), _mm256_loadu_ps(xr + i), s);
    float ss = hsum(s);
    for (; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.f / sqrtf(ss / d + eps);
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= d; i += 8)
      _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vinv), _mm256_loadu_ps(w + i)));
    for (; i < d; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

void to_f32_avx2(const uint16_t* src, WDType dtype, float* dst, int n) {
  int i = 0;
  if (dtype == WDType::kF16) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8w<WDType::kF16>(src + i));
    for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
  } else {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8w<WDType::kBF16>(src + i));
    for (; i < n; ++i) {
      const uint32_t u = (uint32_t)src[i] << 16;
      std::memcpy(dst + i, &u, 4);
    }
  }
}

// exp(x) for x in [-87, 88]: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2] (the polynomial of
// exp512 in avx512_common.h); 2^n is built in the exponent bits, so the caller clamps x.
inline __m256 exp256(__m256 x) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

float row_max_avx2(const float* x, int n) {
  __m256 m = _mm256_set1_ps(x[0]);
  int i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float r = _mm_cvtss_f32(h);
  for (; i < n; ++i) r = x[i] > r ? x[i] : r;
  return r;
}

float exp_sum_avx2(const float* x, int n, float shift, float* out) {
  const __m256 s = _mm256_set1_ps(shift), lo = _mm256_set1_ps(-87.f);
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    // below -87 the result is under fp32's smallest normal: clamped, it is ~1e-38 instead of 0
    const __m256 e = exp256(_mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), s), lo));
    _mm256_storeu_ps(out + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; i < n; ++i) sum += (out[i] = expf(x[i] - shift));
  return sum;
}

}  // namespace

const KernelTable* avx2_kernels() {
  static const KernelTable t = [] {
    KernelTable k = reference_kernels();  // kv_store, attention, rope, silu_mul: reference
    k.name = "avx2";
    k.gemm = gemm_avx2;
    k.rmsnorm = rmsnorm_avx2;
    k.to_f32 = to_f32_avx2;
    k.row_max = row_max_avx2;
    k.exp_sum = exp_sum_avx2;
    k.gemm_bf16 = nullptr;  // no bf16 dot products: act_type bf16 is refused, not run on the scalar twin
    return k;
  }();
  return &t;
}

}  // namespace turbolm::kernels
