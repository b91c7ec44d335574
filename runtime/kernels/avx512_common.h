// Private to the AVX-512 files (*_avx512.cc, compiled with AVX-512 flags): small vector helpers,
// file-local in every file that includes this (anonymous namespace, so the linker never merges
// an AVX-512 copy into the rest of the program), and the kernels one AVX-512 file lends another.
#pragma once
#include <immintrin.h>
#include <math.h>

#include "kernels.h"

namespace turbolm::kernels {

// attention_avx512.cc: the paged KV cache's store and attention, for the table in kernels_avx512.cc.
namespace avx512 {
void kv_store(const float* k, const float* v, int ld, int n, int start_pos, int kv_heads, int head_dim,
              const PagedKV& kv);
void attention(const float* q, int ldq, int n, int start_pos, int heads, int kv_heads, int head_dim,
               const PagedKV& kv, const AttnParams& ap, float* out, int ldo, int h_begin, int h_end, float* scratch);
}  // namespace avx512

namespace {

inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

template <WDType DT>
inline __m512 load16w(const uint16_t* p) {  // 16 fp16/bf16 -> fp32
  const __m256i r = _mm256_loadu_si256((const __m256i*)p);
  if constexpr (DT == WDType::kF16) return _mm512_cvtph_ps(r);
  else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(r), 16));
}
template <WDType DT>
inline __m512 maskz_load16w(__mmask16 m, const uint16_t* p) {
  const __m256i r = _mm256_maskz_loadu_epi16(m, p);
  if constexpr (DT == WDType::kF16) return _mm512_cvtph_ps(r);
  else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(r), 16));
}

// exp(x) to ~1 ulp: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2]; scalef handles over/underflow.
inline __m512 exp512(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// tanh(x) = 1 - 2 / (exp(2x) + 1), x clamped to ±40 (tanh is ±1 in fp32 there; exp512 is exact
// only above about -87). Absolute error ~1e-7 (relative error grows near 0: used where an
// absolute error is what matters, softcapped scores and gelu).
inline __m512 tanh512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-40.f)), _mm512_set1_ps(40.f));
  const __m512 e = exp512(_mm512_add_ps(x, x));
  return _mm512_sub_ps(_mm512_set1_ps(1.f), _mm512_div_ps(_mm512_set1_ps(2.f), _mm512_add_ps(e, _mm512_set1_ps(1.f))));
}

}  // namespace
}  // namespace turbolm::kernels
