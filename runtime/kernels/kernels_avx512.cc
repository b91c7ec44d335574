// AVX-512 kernel table (F/BW/VL/DQ + F16C + FMA): GEMM and the elementwise kernels here, the KV
// cache and attention in attention_avx512.cc. Compiled with AVX-512 flags, so nothing here may
// run before dispatch.cc has checked the CPU: everything is file-local and reached only through
// avx512_kernels(). (No inline functions from shared headers are called here either, so the
// linker can never pick an AVX-512 copy of one for the rest of the program; avx512_common.h's
// helpers are file-local.)
#include <limits>

#include "avx512_common.h"
#include "tables.h"

// GCC 12 flags its own AVX-512 intrinsic headers (_mm512_undefined_*) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace turbolm::kernels {
namespace {

// ---- gemm ---------------------------------------------------------------------------------
// Microkernel: MR rows x one 32-column panel, all of K, accumulators in 2*MR zmm registers.
//
// Batch invariance: every path here (micro, micro_streams, the k-blocked prefill) computes each
// y[m, n] as ONE fused multiply-add chain over k = 0..K-1 in order, starting from 0 (or from y
// when accumulating), so a row's result does not depend on M, on which path M selects, or on the
// k blocking: a sequence gets bit-identical logits alone or in any batch, and seeded sampling
// repeats whatever else is running. Hence no k-unrolled partial sums (they would reorder the
// additions); MR >= 1 rows x 2 halves, or several panels, give the independent chains instead,
// and a k-blocked call resumes the chain from y (loaded first, never added at the end).
#ifndef TURBOLM_PF_ROWS
#define TURBOLM_PF_ROWS 48
#endif
constexpr int kPrefetchRows = TURBOLM_PF_ROWS;  // panel rows (64 B each) ahead of the current k
// (48: +6% on the decode sweep of bench_gemm over 16 on a 2-core Sapphire Rapids; 96 and 160 were
// slower than 48)

template <int MR, WDType DT>
void micro(const float* x, int ldx, const uint16_t* panel, int K, float* y, int ldy, __mmask16 m0,
           __mmask16 m1, bool accumulate) {
  __m512 c[MR][2];
  for (int m = 0; m < MR; ++m) {
    const float* yr = y + (size_t)m * ldy;
    c[m][0] = accumulate ? _mm512_maskz_loadu_ps(m0, yr) : _mm512_setzero_ps();
    c[m][1] = accumulate ? _mm512_maskz_loadu_ps(m1, yr + 16) : _mm512_setzero_ps();
  }
  for (int k = 0; k < K; ++k) {
    _mm_prefetch((const char*)(panel + (size_t)(k + kPrefetchRows) * kPanel), _MM_HINT_T0);
    const uint16_t* wp = panel + (size_t)k * kPanel;
    const __m512 w0 = load16w<DT>(wp), w1 = load16w<DT>(wp + 16);
    for (int m = 0; m < MR; ++m) {
      const __m512 xb = _mm512_set1_ps(x[(size_t)m * ldx + k]);
      c[m][0] = _mm512_fmadd_ps(xb, w0, c[m][0]);
      c[m][1] = _mm512_fmadd_ps(xb, w1, c[m][1]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    float* yr = y + (size_t)m * ldy;
    _mm512_mask_storeu_ps(yr, m0, c[m][0]);
    _mm512_mask_storeu_ps(yr + 16, m1, c[m][1]);
  }
}

// Decode GEMV (M <= 4): P full panels streamed at once, one k-step of each per iteration. A
// single stream leaves the L2 streamer restarting at every 4 KB page with few lines in flight;
// P interleaved streams (P pages apart) keep more misses outstanding: ~20% more bandwidth per
// core (one panel: ~10 GB/s; four: ~12 GB/s). Accumulators: P * MR * 2 zmm, independent.
template <int MR, int P, WDType DT>
void micro_streams(const float* x, int ldx, const uint16_t* panel0, int K, float* y, int ldy, bool accumulate) {
  const size_t pstride = (size_t)K * kPanel;
  __m512 c[P][MR][2];
  for (int i = 0; i < P; ++i)
    for (int m = 0; m < MR; ++m) {
      const float* yr = y + (size_t)m * ldy + i * kPanel;
      c[i][m][0] = accumulate ? _mm512_loadu_ps(yr) : _mm512_setzero_ps();  // the chain resumes from y
      c[i][m][1] = accumulate ? _mm512_loadu_ps(yr + 16) : _mm512_setzero_ps();
    }
  for (int k = 0; k < K; ++k) {
    __m512 xb[MR];
    for (int m = 0; m < MR; ++m) xb[m] = _mm512_set1_ps(x[(size_t)m * ldx + k]);
    for (int i = 0; i < P; ++i) {
      const uint16_t* wp = panel0 + i * pstride + (size_t)k * kPanel;
      _mm_prefetch((const char*)(wp + kPrefetchRows * kPanel), _MM_HINT_T0);
      const __m512 w0 = load16w<DT>(wp), w1 = load16w<DT>(wp + 16);
      for (int m = 0; m < MR; ++m) {
        c[i][m][0] = _mm512_fmadd_ps(xb[m], w0, c[i][m][0]);
        c[i][m][1] = _mm512_fmadd_ps(xb[m], w1, c[i][m][1]);
      }
    }
  }
  for (int i = 0; i < P; ++i)
    for (int m = 0; m < MR; ++m) {
      float* yr = y + (size_t)m * ldy + i * kPanel;
      _mm512_storeu_ps(yr, c[i][m][0]);
      _mm512_storeu_ps(yr + 16, c[i][m][1]);
    }
}
constexpr int kStreams = 4;  // panels per micro_streams call
template <WDType DT>
using StreamsFn = void (*)(const float*, int, const uint16_t*, int, float*, int, bool);
template <WDType DT>
constexpr StreamsFn<DT> kStreamsFn[5] = {nullptr, micro_streams<1, kStreams, DT>, micro_streams<2, kStreams, DT>,
                                         micro_streams<3, kStreams, DT>, micro_streams<4, kStreams, DT>};
template <WDType DT>  // the remainder of a range: two panels at once
constexpr StreamsFn<DT> kStreams2Fn[5] = {nullptr, micro_streams<1, 2, DT>, micro_streams<2, 2, DT>,
                                          micro_streams<3, 2, DT>, micro_streams<4, 2, DT>};

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
    int p = p_begin;
    if (M <= 4) {  // full panels kStreams at a time
      const int full_end = w.N / kPanel < p_end ? w.N / kPanel : p_end;
      for (; p + kStreams <= full_end; p += kStreams)
        kStreamsFn<DT>[M](x, ldx, w.data + (size_t)p * w.K * kPanel, w.K, y + (size_t)p * kPanel, ldy, accumulate);
      for (; p + 2 <= full_end; p += 2)
        kStreams2Fn<DT>[M](x, ldx, w.data + (size_t)p * w.K * kPanel, w.K, y + (size_t)p * kPanel, ldy, accumulate);
    }
    for (; p < p_end; ++p) {
      const int cols = w.N - p * kPanel;
      kMicro<DT>[M](x, ldx, w.data + (size_t)p * w.K * kPanel, w.K, y + (size_t)p * kPanel, ldy, tail_mask(cols),
                    tail_mask(cols - 16 > 0 ? cols - 16 : 0), accumulate);
    }
    return;
  }
  // Prefill: panels in groups of kNC and K in near-equal blocks of <= kKC (576 -> 3 x 192, not
  // 256 + 256 + 64), so a group's k-slices (32 x <= 16 KB) stay in L2 across the row blocks and a
  // row block's x slice (12 x <= 256 floats) stays in L1 across the group's panels; partial sums
  // accumulate in y. (Converting each k-slice to fp32 once and reusing it across the row blocks
  // measured 8-18% slower: the x slices then stream from L2.)
  constexpr int kKC = 256, kNC = 32;
  const int nk = (w.K + kKC - 1) / kKC, kstep = (w.K + nk - 1) / nk;
  for (int p0 = p_begin; p0 < p_end; p0 += kNC) {
    const int p1 = p_end - p0 < kNC ? p_end : p0 + kNC;
    for (int k0 = 0; k0 < w.K; k0 += kstep) {
      const int kc = w.K - k0 < kstep ? w.K - k0 : kstep;
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

void gelu_mul_avx512(const float* gate, const float* up, float* out, int n) {
  const __m512 c = _mm512_set1_ps(0.7978845608028654f), c3 = _mm512_set1_ps(0.044715f), half = _mm512_set1_ps(0.5f);
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 inner = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(c3, x), _mm512_mul_ps(x, x), x));
    const __m512 g = _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(_mm512_set1_ps(1.f), tanh512(inner)));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, up + i)));
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

float row_max_avx512(const float* x, int n) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, x + i));
  }
  return _mm512_reduce_max_ps(m);
}

float exp_sum_avx512(const float* x, int n, float shift, float* out) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    // exp512 is exact down to about -87 and wrong far below it: clamp (exp(-104) is 0 in fp32)
    const __m512 d = _mm512_max_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), s), _mm512_set1_ps(-104.f));
    const __m512 e = exp512(d);
    _mm512_mask_storeu_ps(out + i, k, e);
    acc = _mm512_mask_add_ps(acc, k, acc, e);
  }
  return _mm512_reduce_add_ps(acc);
}

void softcap_avx512(float* x, int n, float cap) {
  const __m512 c = _mm512_set1_ps(cap), ic = _mm512_set1_ps(1.f / cap);
  for (int i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(c, tanh512(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), ic))));
  }
}

}  // namespace

const KernelTable* avx512_kernels() {
  static const KernelTable t{"avx512", gemm_avx512, avx512::kv_store, avx512::attention, rmsnorm_avx512,
                             rope_avx512, silu_mul_avx512, gelu_mul_avx512, to_f32_avx512, row_max_avx512, exp_sum_avx512,
                             nullptr, false, softcap_avx512};
  return &t;
}

}  // namespace turbolm::kernels
