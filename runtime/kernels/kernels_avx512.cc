// AVX-512 kernel table (F/BW/VL/DQ + F16C + FMA). Compiled with AVX-512 flags, so nothing here
// may run before dispatch.cc has checked the CPU: everything is file-local and reached only
// through avx512_kernels(). (No inline functions from shared headers are called here either,
// so the linker can never pick an AVX-512 copy of one for the rest of the program.)
#include <immintrin.h>
#include <math.h>

#include "tables.h"

// GCC 12 flags its own AVX-512 intrinsic headers (_mm512_undefined_*) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace turbolm::kernels {
namespace {

// ---- helpers ------------------------------------------------------------------------------
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

// ---- gemm ---------------------------------------------------------------------------------
// Microkernel: MR rows x one 32-column panel, all of K, accumulators in 2*MR zmm registers.
// Small MR (memory-bound GEMV) unrolls K by 4 with independent accumulators to hide FMA latency.
#ifndef TURBOLM_PF_ROWS
#define TURBOLM_PF_ROWS 16
#endif
constexpr int kPrefetchRows = TURBOLM_PF_ROWS;  // panel rows (64 B each) ahead of the current k

template <int MR, WDType DT>
void micro(const float* x, int ldx, const uint16_t* panel, int K, float* y, int ldy, __mmask16 m0,
           __mmask16 m1, bool accumulate) {
  constexpr int U = MR <= 2 ? 4 : 1;
  __m512 c[U][MR][2];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < MR; ++m) c[u][m][0] = c[u][m][1] = _mm512_setzero_ps();
  int k = 0;
  for (; k + U <= K; k += U) {
    _mm_prefetch((const char*)(panel + (size_t)(k + kPrefetchRows) * kPanel), _MM_HINT_T0);
    if constexpr (U == 4) {
      _mm_prefetch((const char*)(panel + (size_t)(k + kPrefetchRows + 1) * kPanel), _MM_HINT_T0);
      _mm_prefetch((const char*)(panel + (size_t)(k + kPrefetchRows + 2) * kPanel), _MM_HINT_T0);
      _mm_prefetch((const char*)(panel + (size_t)(k + kPrefetchRows + 3) * kPanel), _MM_HINT_T0);
    }
    for (int u = 0; u < U; ++u) {
      const uint16_t* wp = panel + (size_t)(k + u) * kPanel;
      const __m512 w0 = load16w<DT>(wp), w1 = load16w<DT>(wp + 16);
      for (int m = 0; m < MR; ++m) {
        const __m512 xb = _mm512_set1_ps(x[(size_t)m * ldx + k + u]);
        c[u][m][0] = _mm512_fmadd_ps(xb, w0, c[u][m][0]);
        c[u][m][1] = _mm512_fmadd_ps(xb, w1, c[u][m][1]);
      }
    }
  }
  for (; k < K; ++k) {
    const uint16_t* wp = panel + (size_t)k * kPanel;
    const __m512 w0 = load16w<DT>(wp), w1 = load16w<DT>(wp + 16);
    for (int m = 0; m < MR; ++m) {
      const __m512 xb = _mm512_set1_ps(x[(size_t)m * ldx + k]);
      c[0][m][0] = _mm512_fmadd_ps(xb, w0, c[0][m][0]);
      c[0][m][1] = _mm512_fmadd_ps(xb, w1, c[0][m][1]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    __m512 a0 = c[0][m][0], a1 = c[0][m][1];
    if constexpr (U == 4) {
      a0 = _mm512_add_ps(_mm512_add_ps(a0, c[1][m][0]), _mm512_add_ps(c[2][m][0], c[3][m][0]));
      a1 = _mm512_add_ps(_mm512_add_ps(a1, c[1][m][1]), _mm512_add_ps(c[2][m][1], c[3][m][1]));
    }
    float* yr = y + (size_t)m * ldy;
    if (accumulate) {
      a0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, yr), a0);
      a1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, yr + 16), a1);
    }
    _mm512_mask_storeu_ps(yr, m0, a0);
    _mm512_mask_storeu_ps(yr + 16, m1, a1);
  }
}

template <WDType DT>
using MicroFn = void (*)(const float*, int, const uint16_t*, int, float*, int, __mmask16, __mmask16, bool);

template <WDType DT>
constexpr MicroFn<DT> kMicro[13] = {nullptr,        micro<1, DT>,  micro<2, DT>, micro<3, DT>, micro<4, DT>,
                                    micro<5, DT>,   micro<6, DT>,  micro<7, DT>, micro<8, DT>, micro<9, DT>,
                                    micro<10, DT>,  micro<11, DT>, micro<12, DT>};
constexpr int kMR = 12;

// Row blocks of near-equal size <= kMR (13 rows -> 7 + 6, not 12 + 1).
inline int block_rows(int remaining, int blocks_left) { return (remaining + blocks_left - 1) / blocks_left; }

template <WDType DT>
void gemm_t(const float* x, int ldx, const PackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
            bool accumulate) {
  const int n_blocks = (M + kMR - 1) / kMR;
  if (n_blocks == 1) {  // decode / small batch: one pass over each panel, streaming the weights
    for (int p = p_begin; p < p_end; ++p) {
      const int cols = w.N - p * kPanel;
      kMicro<DT>[M](x, ldx, w.data + (size_t)p * w.K * kPanel, w.K, y + (size_t)p * kPanel, ldy, tail_mask(cols),
                    tail_mask(cols - 16 > 0 ? cols - 16 : 0), accumulate);
    }
    return;
  }
  // Prefill: panels in groups of kNC and K in blocks of kKC, so a group's k-slices (32 x 16 KB
  // = 512 KB) stay in L2 across the row blocks and a row block's x slice (12 x 256 floats =
  // 12 KB) stays in L1 across the group's panels; partial sums accumulate in y.
  constexpr int kKC = 256, kNC = 32;
  for (int p0 = p_begin; p0 < p_end; p0 += kNC) {
    const int p1 = p_end - p0 < kNC ? p_end : p0 + kNC;
    for (int k0 = 0; k0 < w.K; k0 += kKC) {
      const int kc = w.K - k0 < kKC ? w.K - k0 : kKC;
      const bool acc = accumulate || k0 > 0;
      int m = 0;
      for (int b = 0; b < n_blocks; ++b) {
        const int rows = block_rows(M - m, n_blocks - b);
        for (int p = p0; p < p1; ++p) {
          const int cols = w.N - p * kPanel;
          kMicro<DT>[rows](x + (size_t)m * ldx + k0, ldx, w.data + ((size_t)p * w.K + k0) * kPanel, kc,
                           y + (size_t)m * ldy + (size_t)p * kPanel, ldy, tail_mask(cols),
                           tail_mask(cols - 16 > 0 ? cols - 16 : 0), acc);
        }
        m += rows;
      }
    }
  }
}

void gemm_avx512(const float* x, int ldx, const PackedMatrix& w, float* y, int ldy, int M, int p_begin,
                 int p_end, bool accumulate) {
  if (M <= 0) return;
  if (w.dtype == WDType::kF16) gemm_t<WDType::kF16>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
  else gemm_t<WDType::kBF16>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
}

// ---- paged KV cache -------------------------------------------------------------------------
// 16 K or V elements (masked) of one cache row as fp32; int8 dequantizes q * scale + zp.
template <KVType KT>
inline __m512 kv_load(const void* row, int d, __mmask16 m, float scale, float zp) {
  if constexpr (KT == KVType::kF16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t*)row + d));
  } else if constexpr (KT == KVType::kF32) {
    return _mm512_maskz_loadu_ps(m, (const float*)row + d);
  } else {
    const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, (const int8_t*)row + d)));
    return _mm512_fmadd_ps(q, _mm512_set1_ps(scale), _mm512_set1_ps(zp));
  }
}

template <KVType KT>
inline void kv_store_row(const float* src, void* row, int head_dim, float scale, float zp) {
  for (int d = 0; d < head_dim; d += 16) {
    const __mmask16 m = tail_mask(head_dim - d);
    const __m512 v = _mm512_maskz_loadu_ps(m, src + d);
    if constexpr (KT == KVType::kF16) {
      _mm256_mask_storeu_epi16((uint16_t*)row + d, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else if constexpr (KT == KVType::kF32) {
      _mm512_mask_storeu_ps((float*)row + d, m, v);
    } else {
      __m512 q = _mm512_div_ps(_mm512_sub_ps(v, _mm512_set1_ps(zp)), _mm512_set1_ps(scale));
      q = _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-128.f)), _mm512_set1_ps(127.f));
      _mm_mask_storeu_epi8((int8_t*)row + d, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
    }
  }
}

inline size_t kv_elem_size(KVType t) { return t == KVType::kF32 ? 4 : (t == KVType::kF16 ? 2 : 1); }

inline int64_t kv_row_offset(const PagedKV& kv, int t, int h, int head_dim) {
  return (int64_t)kv.block_table[t / kv.block_len] * kv.block_stride + h * kv.head_stride +
         (int64_t)(t % kv.block_len) * head_dim;
}

template <KVType KT>
void kv_store_t(const float* k, const float* v, int ld, int n, int start_pos, int kv_heads, int head_dim,
                const PagedKV& kv) {
  const size_t es = kv_elem_size(KT);
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < kv_heads; ++h) {
      const int64_t off = kv_row_offset(kv, start_pos + i, h, head_dim);
      kv_store_row<KT>(k + (size_t)i * ld + h * head_dim, (char*)kv.k_base + off * es, head_dim, kv.k_scale, kv.k_zp);
      kv_store_row<KT>(v + (size_t)i * ld + h * head_dim, (char*)kv.v_base + off * es, head_dim, kv.v_scale, kv.v_zp);
    }
}

void kv_store_avx512(const float* k, const float* v, int ld, int n, int start_pos, int kv_heads, int head_dim,
                     const PagedKV& kv) {
  switch (kv.type) {
    case KVType::kF16: return kv_store_t<KVType::kF16>(k, v, ld, n, start_pos, kv_heads, head_dim, kv);
    case KVType::kF32: return kv_store_t<KVType::kF32>(k, v, ld, n, start_pos, kv_heads, head_dim, kv);
    case KVType::kI8: return kv_store_t<KVType::kI8>(k, v, ld, n, start_pos, kv_heads, head_dim, kv);
  }
}

// Softmax over s[0, len) in place (max-subtracted); returns 1 / sum.
inline float softmax_inplace(float* s, int len) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int t = 0; t < len; t += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, tail_mask(len - t), s + t));
  const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int t = 0; t < len; t += 16) {
    const __mmask16 m = tail_mask(len - t);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + t), vmax));
    _mm512_mask_storeu_ps(s + t, m, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
  }
  return 1.f / _mm512_reduce_add_ps(sum);
}

// One query row of one head over positions [0, len). NC = head_dim / 16 rounded up, with the
// q / output chunks held in registers (NC <= 8, head_dim <= 128).
template <KVType KT, int NC>
void attend_row(const float* qi, int len, int kh, int head_dim, const PagedKV& kv, float scale, float* oi,
                float* scores) {
  const size_t es = kv_elem_size(KT);
  const __mmask16 ml = tail_mask(head_dim - (NC - 1) * 16);
  __m512 q[NC];
  for (int c = 0; c < NC; ++c) q[c] = _mm512_maskz_loadu_ps(c == NC - 1 ? ml : 0xffff, qi + c * 16);
  for (int t = 0; t < len; ++t) {
    const char* row = (const char*)kv.k_base + kv_row_offset(kv, t, kh, head_dim) * es;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    for (int c = 0; c < NC; ++c) {
      const __m512 kc = kv_load<KT>(row, c * 16, c == NC - 1 ? ml : 0xffff, kv.k_scale, kv.k_zp);
      if (c & 1) s1 = _mm512_fmadd_ps(q[c], kc, s1);
      else s0 = _mm512_fmadd_ps(q[c], kc, s0);
    }
    scores[t] = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) * scale;
  }
  const float inv = softmax_inplace(scores, len);
  __m512 o[NC];
  for (int c = 0; c < NC; ++c) o[c] = _mm512_setzero_ps();
  for (int t = 0; t < len; ++t) {
    const char* row = (const char*)kv.v_base + kv_row_offset(kv, t, kh, head_dim) * es;
    const __m512 p = _mm512_set1_ps(scores[t]);
    for (int c = 0; c < NC; ++c)
      o[c] = _mm512_fmadd_ps(p, kv_load<KT>(row, c * 16, c == NC - 1 ? ml : 0xffff, kv.v_scale, kv.v_zp), o[c]);
  }
  const __m512 vinv = _mm512_set1_ps(inv);
  for (int c = 0; c < NC; ++c) _mm512_mask_storeu_ps(oi + c * 16, c == NC - 1 ? ml : 0xffff, _mm512_mul_ps(o[c], vinv));
}

// Any head_dim: chunks in a loop, output accumulated in place in oi.
template <KVType KT>
void attend_row_any(const float* qi, int len, int kh, int head_dim, const PagedKV& kv, float scale, float* oi,
                    float* scores) {
  const size_t es = kv_elem_size(KT);
  for (int t = 0; t < len; ++t) {
    const char* row = (const char*)kv.k_base + kv_row_offset(kv, t, kh, head_dim) * es;
    __m512 s = _mm512_setzero_ps();
    for (int d = 0; d < head_dim; d += 16) {
      const __mmask16 m = tail_mask(head_dim - d);
      s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qi + d), kv_load<KT>(row, d, m, kv.k_scale, kv.k_zp), s);
    }
    scores[t] = _mm512_reduce_add_ps(s) * scale;
  }
  const float inv = softmax_inplace(scores, len);
  for (int d = 0; d < head_dim; d += 16) _mm512_mask_storeu_ps(oi + d, tail_mask(head_dim - d), _mm512_setzero_ps());
  for (int t = 0; t < len; ++t) {
    const char* row = (const char*)kv.v_base + kv_row_offset(kv, t, kh, head_dim) * es;
    const __m512 p = _mm512_set1_ps(scores[t]);
    for (int d = 0; d < head_dim; d += 16) {
      const __mmask16 m = tail_mask(head_dim - d);
      _mm512_mask_storeu_ps(oi + d, m, _mm512_fmadd_ps(p, kv_load<KT>(row, d, m, kv.v_scale, kv.v_zp),
                                                        _mm512_maskz_loadu_ps(m, oi + d)));
    }
  }
  const __m512 vinv = _mm512_set1_ps(inv);
  for (int d = 0; d < head_dim; d += 16) {
    const __mmask16 m = tail_mask(head_dim - d);
    _mm512_mask_storeu_ps(oi + d, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, oi + d), vinv));
  }
}

template <KVType KT>
void attention_t(const float* q, int ldq, int n, int start_pos, int heads, int kv_heads, int head_dim,
                 const PagedKV& kv, float scale, float* out, int ldo, int h_begin, int h_end, float* scratch) {
  using RowFn = void (*)(const float*, int, int, int, const PagedKV&, float, float*, float*);
  static constexpr RowFn kRow[9] = {attend_row_any<KT>, attend_row<KT, 1>, attend_row<KT, 2>,
                                    attend_row<KT, 3>,  attend_row<KT, 4>, attend_row<KT, 5>,
                                    attend_row<KT, 6>,  attend_row<KT, 7>, attend_row<KT, 8>};
  const int nc = (head_dim + 15) / 16;
  const RowFn row_fn = nc <= 8 ? kRow[nc] : kRow[0];
  const int group = heads / kv_heads;
  for (int h = h_begin; h < h_end; ++h)
    for (int i = 0; i < n; ++i)
      row_fn(q + (size_t)i * ldq + h * head_dim, start_pos + i + 1, h / group, head_dim, kv, scale,
             out + (size_t)i * ldo + h * head_dim, scratch);
}

void attention_avx512(const float* q, int ldq, int n, int start_pos, int heads, int kv_heads, int head_dim,
                      const PagedKV& kv, float scale, float* out, int ldo, int h_begin, int h_end, float* scratch) {
  switch (kv.type) {
    case KVType::kF16:
      return attention_t<KVType::kF16>(q, ldq, n, start_pos, heads, kv_heads, head_dim, kv, scale, out, ldo, h_begin, h_end, scratch);
    case KVType::kF32:
      return attention_t<KVType::kF32>(q, ldq, n, start_pos, heads, kv_heads, head_dim, kv, scale, out, ldo, h_begin, h_end, scratch);
    case KVType::kI8:
      return attention_t<KVType::kI8>(q, ldq, n, start_pos, heads, kv_heads, head_dim, kv, scale, out, ldo, h_begin, h_end, scratch);
  }
}

// ---- elementwise ----------------------------------------------------------------------------
void rmsnorm_avx512(const float* x, int ldx, const float* w, float eps, int M, int d, float* y, int ldy) {
  for (int r = 0; r < M; ++r) {
    const float* xr = x + (size_t)r * ldx;
    float* yr = y + (size_t)r * ldy;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= d; i += 32) {
      const __m512 a = _mm512_loadu_ps(xr + i), b = _mm512_loadu_ps(xr + i + 16);
      s0 = _mm512_fmadd_ps(a, a, s0);
      s1 = _mm512_fmadd_ps(b, b, s1);
    }
    for (; i < d; i += 16) {
      const __m512 a = _mm512_maskz_loadu_ps(tail_mask(d - i), xr + i);
      s0 = _mm512_fmadd_ps(a, a, s0);
    }
    const __m512 inv = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / d + eps));
    for (i = 0; i < d; i += 16) {
      const __mmask16 m = tail_mask(d - i);
      _mm512_mask_storeu_ps(yr + i, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), inv),
                                                     _mm512_maskz_loadu_ps(m, w + i)));
    }
  }
}

constexpr int kMaxRot = 1024;
void rope_ref_fallback(float* x, int ldx, int T, int heads, int head_dim, int rot_dim, const int32_t* pos,
                       const float* inv_freq) {
  reference_kernels().rope(x, ldx, T, heads, head_dim, rot_dim, pos, inv_freq);
}

void rope_avx512(float* x, int ldx, int T, int heads, int head_dim, int rot_dim, const int32_t* pos,
                 const float* inv_freq) {
  if (rot_dim > kMaxRot) return rope_ref_fallback(x, ldx, T, heads, head_dim, rot_dim, pos, inv_freq);
  alignas(64) float cd[kMaxRot], sd[kMaxRot];  // per pair: (c, c) and (-s, +s)
  const int pairs = rot_dim / 2, len = pairs * 2;
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < pairs; ++i) {
      const float a = (float)pos[t] * inv_freq[i];
      const float c = cosf(a), s = sinf(a);
      cd[2 * i] = cd[2 * i + 1] = c;
      sd[2 * i] = -s;
      sd[2 * i + 1] = s;
    }
    for (int h = 0; h < heads; ++h) {
      float* p = x + (size_t)t * ldx + h * head_dim;
      for (int i = 0; i < len; i += 16) {
        const __mmask16 m = tail_mask(len - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, p + i);
        const __m512 sw = _mm512_permute_ps(v, 0xB1);  // swap within pairs
        const __m512 r = _mm512_fmadd_ps(sw, _mm512_maskz_loadu_ps(m, sd + i),
                                         _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, cd + i)));
        _mm512_mask_storeu_ps(p + i, m, r);
      }
    }
  }
}

void silu_mul_avx512(const float* gate, const float* up, float* out, int n) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 r = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(m, up + i));
    _mm512_mask_storeu_ps(out + i, m, r);
  }
}

void to_f32_avx512(const uint16_t* src, WDType dtype, float* dst, int n) {
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = dtype == WDType::kF16 ? maskz_load16w<WDType::kF16>(m, src + i)
                                           : maskz_load16w<WDType::kBF16>(m, src + i);
    _mm512_mask_storeu_ps(dst + i, m, v);
  }
}

}  // namespace

const KernelTable* avx512_kernels() {
  static const KernelTable t{"avx512", gemm_avx512, kv_store_avx512, attention_avx512, rmsnorm_avx512,
                             rope_avx512, silu_mul_avx512, to_f32_avx512};
  return &t;
}

}  // namespace turbolm::kernels
