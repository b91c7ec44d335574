// AVX-512 quantized GEMM (int4 / int8 weights, fp32 activations). Like kernels_avx512.cc: compiled
// with AVX-512 flags, file-local, reached only through avx512_qkernels() after dispatch checked the
// CPU, and calls no inline function of a shared header (constant expressions only).
//
// Two microkernels over one 32-column panel (2 zmm of fp32 per row):
// - small M (decode, M <= 4): per group, c = sum_k x * q (convert + FMA only), then
//   acc += s * c - zs * sum_k x; the x sums come from a per-call table (xsum below);
// - larger M, one row block (M <= 12): each k-row is dequantized once in registers, w = q * s - zs,
//   and reused by the MR rows, with the same k / panel blocking as the fp16 GEMM;
// - several row blocks (batched decode, prefill): a block of panels x k-rows is dequantized once
//   into a per-thread fp32 buffer that every row block reads (qgemm_dequant_once).
#include <immintrin.h>

#include <cstdlib>

#include "qgemm.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace turbolm::kernels {
namespace {

constexpr int kRB4 = kQRowBytes(4), kRB8 = kQRowBytes(8);

inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

// One panel k-row as 2 x 16 fp32 (columns 0..15, 16..31), q values not yet scaled.
template <int BITS>
inline void load_row(const uint8_t* row, __m512& w0, __m512& w1) {
  if constexpr (BITS == 4) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)row));
    w0 = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xf)));
    w1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
  } else {
    w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)row)));
    w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(row + 16))));
  }
}

inline void store_tile(float* yr, __m512 a0, __m512 a1, __mmask16 m0, __mmask16 m1, bool accumulate) {
  if (accumulate) {
    a0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, yr), a0);
    a1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, yr + 16), a1);
  }
  _mm512_mask_storeu_ps(yr, m0, a0);
  _mm512_mask_storeu_ps(yr + 16, m1, a1);
}

// ---- small M: the group trick ----------------------------------------------------------------
// Groups [0, n_groups) of one panel, starting at k-row `q` / scale block `sz`; x points at the
// chunk's first k; xsum[m * kXS + g] = sum of x[m] over group g.
constexpr int kXS = 64;  // groups per chunk of the xsum table

template <int MR, int BITS>
void micro_small(const float* x, int ldx, const uint8_t* q, const float* sz, int n_groups, int G, const float* xsum,
                 float* y, int ldy, __mmask16 m0, __mmask16 m1, bool accumulate) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  constexpr int U = MR == 1 ? 4 : MR == 2 ? 2 : 1;
  __m512 acc[MR][2];
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (int g = 0; g < n_groups; ++g) {
    __m512 c[U][MR][2];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < MR; ++m) c[u][m][0] = c[u][m][1] = _mm512_setzero_ps();
    const uint8_t* qg = q + (size_t)g * G * RB;
    const float* xg = x + (size_t)g * G;
    for (int k = 0; k < G; k += U) {
      _mm_prefetch((const char*)(qg + (size_t)(k + 64) * RB), _MM_HINT_T0);
      if constexpr (BITS == 8 && U >= 2) _mm_prefetch((const char*)(qg + (size_t)(k + 66) * RB), _MM_HINT_T0);
      for (int u = 0; u < U; ++u) {
        __m512 w0, w1;
        load_row<BITS>(qg + (size_t)(k + u) * RB, w0, w1);
        for (int m = 0; m < MR; ++m) {
          const __m512 xb = _mm512_set1_ps(xg[(size_t)m * ldx + k + u]);
          c[u][m][0] = _mm512_fmadd_ps(xb, w0, c[u][m][0]);
          c[u][m][1] = _mm512_fmadd_ps(xb, w1, c[u][m][1]);
        }
      }
    }
    const float* s = sz + (size_t)g * kQGroupFloats;
    const __m512 s0 = _mm512_loadu_ps(s), s1 = _mm512_loadu_ps(s + 16);
    const __m512 z0 = _mm512_loadu_ps(s + 32), z1 = _mm512_loadu_ps(s + 48);
    for (int m = 0; m < MR; ++m) {
      __m512 a0 = c[0][m][0], a1 = c[0][m][1];
      for (int u = 1; u < U; ++u) a0 = _mm512_add_ps(a0, c[u][m][0]), a1 = _mm512_add_ps(a1, c[u][m][1]);
      const __m512 xs = _mm512_set1_ps(xsum[m * kXS + g]);
      acc[m][0] = _mm512_fnmadd_ps(z0, xs, _mm512_fmadd_ps(a0, s0, acc[m][0]));
      acc[m][1] = _mm512_fnmadd_ps(z1, xs, _mm512_fmadd_ps(a1, s1, acc[m][1]));
    }
  }
  for (int m = 0; m < MR; ++m) store_tile(y + (size_t)m * ldy, acc[m][0], acc[m][1], m0, m1, accumulate);
}

template <int BITS>
void qgemm_small(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                 bool accumulate) {
  using Fn = void (*)(const float*, int, const uint8_t*, const float*, int, int, const float*, float*, int, __mmask16,
                      __mmask16, bool);
  static constexpr Fn kFn[5] = {nullptr, micro_small<1, BITS>, micro_small<2, BITS>, micro_small<3, BITS>,
                                micro_small<4, BITS>};
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  const int G = w.group_size, n_groups = w.K / G;
  alignas(64) float xsum[4 * kXS];
  for (int g0 = 0; g0 < n_groups; g0 += kXS) {
    const int ng = n_groups - g0 < kXS ? n_groups - g0 : kXS;
    for (int m = 0; m < M; ++m)
      for (int g = 0; g < ng; ++g) {
        const float* xr = x + (size_t)m * ldx + (size_t)(g0 + g) * G;
        __m512 s = _mm512_loadu_ps(xr);
        for (int k = 16; k < G; k += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(xr + k));
        xsum[m * kXS + g] = _mm512_reduce_add_ps(s);
      }
    const bool acc = accumulate || g0 > 0;
    for (int p = p_begin; p < p_end; ++p) {
      const int cols = w.N - p * kPanel;
      kFn[M](x + (size_t)g0 * G, ldx, w.q + ((size_t)p * w.K + (size_t)g0 * G) * RB,
             w.sz + ((size_t)p * n_groups + g0) * kQGroupFloats, ng, G, xsum, y + (size_t)p * kPanel, ldy,
             tail_mask(cols), tail_mask(cols - 16), acc);
    }
  }
}

// ---- larger M: dequantize each k-row in registers ----------------------------------------------
// Groups [0, n_groups) of one panel for MR rows.
template <int MR, int BITS>
void micro_big(const float* x, int ldx, const uint8_t* q, const float* sz, int n_groups, int G, float* y, int ldy,
               __mmask16 m0, __mmask16 m1, bool accumulate) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  __m512 c[MR][2];
  for (int m = 0; m < MR; ++m) c[m][0] = c[m][1] = _mm512_setzero_ps();
  for (int g = 0; g < n_groups; ++g) {
    const float* s = sz + (size_t)g * kQGroupFloats;
    const __m512 s0 = _mm512_loadu_ps(s), s1 = _mm512_loadu_ps(s + 16);
    const __m512 z0 = _mm512_loadu_ps(s + 32), z1 = _mm512_loadu_ps(s + 48);
    const uint8_t* qg = q + (size_t)g * G * RB;
    const float* xg = x + (size_t)g * G;
    for (int k = 0; k < G; ++k) {
      __m512 w0, w1;
      load_row<BITS>(qg + (size_t)k * RB, w0, w1);
      w0 = _mm512_fmsub_ps(w0, s0, z0);
      w1 = _mm512_fmsub_ps(w1, s1, z1);
      for (int m = 0; m < MR; ++m) {
        const __m512 xb = _mm512_set1_ps(xg[(size_t)m * ldx + k]);
        c[m][0] = _mm512_fmadd_ps(xb, w0, c[m][0]);
        c[m][1] = _mm512_fmadd_ps(xb, w1, c[m][1]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) store_tile(y + (size_t)m * ldy, c[m][0], c[m][1], m0, m1, accumulate);
}

constexpr int kMR = 12;

// Several row blocks (M > kMR: batched decode, prefill): dequantizing each k-row once per row block
// costs ~7 vector ops per 24 FMAs. Instead a block of panels x k-rows is dequantized once into an
// fp32 buffer (L2-resident: kNCD panels x <= 256 rows x 128 B) that every row block then reads
// like an fp32 weight: two loads per k-row, no integer work.
constexpr int kNCD = 8;

template <int MR>
void micro_f32(const float* x, int ldx, const float* wb, int kc, float* y, int ldy, __mmask16 m0, __mmask16 m1,
               bool accumulate) {
  __m512 c[MR][2];
  for (int m = 0; m < MR; ++m) c[m][0] = c[m][1] = _mm512_setzero_ps();
  for (int k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_loadu_ps(wb + (size_t)k * kPanel), w1 = _mm512_loadu_ps(wb + (size_t)k * kPanel + 16);
    for (int m = 0; m < MR; ++m) {
      const __m512 xb = _mm512_set1_ps(x[(size_t)m * ldx + k]);
      c[m][0] = _mm512_fmadd_ps(xb, w0, c[m][0]);
      c[m][1] = _mm512_fmadd_ps(xb, w1, c[m][1]);
    }
  }
  for (int m = 0; m < MR; ++m) store_tile(y + (size_t)m * ldy, c[m][0], c[m][1], m0, m1, accumulate);
}

// Panel rows [0, n_groups * G) of one panel dequantized to wb[k][32] = q * s - zs.
template <int BITS>
void dequant_panel(const uint8_t* q, const float* sz, int n_groups, int G, float* wb) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  for (int g = 0; g < n_groups; ++g) {
    const float* s = sz + (size_t)g * kQGroupFloats;
    const __m512 s0 = _mm512_loadu_ps(s), s1 = _mm512_loadu_ps(s + 16);
    const __m512 z0 = _mm512_loadu_ps(s + 32), z1 = _mm512_loadu_ps(s + 48);
    for (int k = 0; k < G; ++k) {
      __m512 w0, w1;
      load_row<BITS>(q + (size_t)(g * G + k) * RB, w0, w1);
      float* o = wb + (size_t)(g * G + k) * kPanel;
      _mm512_storeu_ps(o, _mm512_fmsub_ps(w0, s0, z0));
      _mm512_storeu_ps(o + 16, _mm512_fmsub_ps(w1, s1, z1));
    }
  }
}

template <int BITS>
void qgemm_big(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
               bool accumulate);

// A per-thread buffer, grown on demand. Plain malloc, not std::vector: this file is compiled for
// AVX-512, and an inline library template instantiated here could be the copy the linker keeps for
// every other file too (see the top of this file).
struct DequantBuffer {
  float* p = nullptr;
  size_t n = 0;
  float* get(size_t need) {
    if (n < need) {
      std::free(p);
      p = static_cast<float*>(std::malloc(need * sizeof(float)));
      n = p ? need : 0;
    }
    return p;
  }
  ~DequantBuffer() { std::free(p); }
};

template <int BITS>
void qgemm_dequant_once(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin,
                        int p_end, bool accumulate) {
  using Fn = void (*)(const float*, int, const float*, int, float*, int, __mmask16, __mmask16, bool);
  static constexpr Fn kFn[kMR + 1] = {nullptr,       micro_f32<1>,  micro_f32<2>,  micro_f32<3>, micro_f32<4>,
                                      micro_f32<5>,  micro_f32<6>,  micro_f32<7>,  micro_f32<8>, micro_f32<9>,
                                      micro_f32<10>, micro_f32<11>, micro_f32<12>};
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  const int G = w.group_size, n_groups = w.K / G;
  const int kc_groups = G >= 256 ? 1 : 256 / G;
  const int n_blocks = (M + kMR - 1) / kMR;
  thread_local DequantBuffer tl;  // [kNCD][kc][kPanel] of this thread's current block
  float* buf = tl.get((size_t)kNCD * kc_groups * G * kPanel);
  if (buf == nullptr) return qgemm_big<BITS>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);  // no memory
  for (int p0 = p_begin; p0 < p_end; p0 += kNCD) {
    const int p1 = p_end - p0 < kNCD ? p_end : p0 + kNCD;
    for (int g0 = 0; g0 < n_groups; g0 += kc_groups) {
      const int ng = n_groups - g0 < kc_groups ? n_groups - g0 : kc_groups;
      const int k0 = g0 * G, kc = ng * G;
      for (int p = p0; p < p1; ++p)
        dequant_panel<BITS>(w.q + ((size_t)p * w.K + k0) * RB, w.sz + ((size_t)p * n_groups + g0) * kQGroupFloats,
                            ng, G, buf + (size_t)(p - p0) * kc * kPanel);
      const bool acc = accumulate || g0 > 0;
      int m = 0;
      for (int b = 0; b < n_blocks; ++b) {
        const int rows = (M - m + (n_blocks - b) - 1) / (n_blocks - b);
        for (int p = p0; p < p1; ++p) {
          const int cols = w.N - p * kPanel;
          kFn[rows](x + (size_t)m * ldx + k0, ldx, buf + (size_t)(p - p0) * kc * kPanel, kc,
                    y + (size_t)m * ldy + (size_t)p * kPanel, ldy, tail_mask(cols), tail_mask(cols - 16), acc);
        }
        m += rows;
      }
    }
  }
}

template <int BITS>
void qgemm_big(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
               bool accumulate) {
  using Fn = void (*)(const float*, int, const uint8_t*, const float*, int, int, float*, int, __mmask16, __mmask16, bool);
  static constexpr Fn kFn[kMR + 1] = {nullptr,           micro_big<1, BITS>,  micro_big<2, BITS>,  micro_big<3, BITS>,
                                      micro_big<4, BITS>, micro_big<5, BITS>,  micro_big<6, BITS>,  micro_big<7, BITS>,
                                      micro_big<8, BITS>, micro_big<9, BITS>,  micro_big<10, BITS>, micro_big<11, BITS>,
                                      micro_big<12, BITS>};
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  const int G = w.group_size, n_groups = w.K / G;
  // k blocks of whole groups (~256 rows), panels in groups of kNC: a panel group's k-slices stay
  // in L2 across the row blocks, a row block's x slice stays in L1 across the panels.
  const int kc_groups = G >= 256 ? 1 : 256 / G;
  constexpr int kNC = 32;
  const int n_blocks = (M + kMR - 1) / kMR;
  for (int p0 = p_begin; p0 < p_end; p0 += kNC) {
    const int p1 = p_end - p0 < kNC ? p_end : p0 + kNC;
    for (int g0 = 0; g0 < n_groups; g0 += kc_groups) {
      const int ng = n_groups - g0 < kc_groups ? n_groups - g0 : kc_groups;
      const int k0 = g0 * G;
      const bool acc = accumulate || g0 > 0;
      int m = 0;
      for (int b = 0; b < n_blocks; ++b) {
        const int rows = (M - m + (n_blocks - b) - 1) / (n_blocks - b);
        for (int p = p0; p < p1; ++p) {
          const int cols = w.N - p * kPanel;
          kFn[rows](x + (size_t)m * ldx + k0, ldx, w.q + ((size_t)p * w.K + k0) * RB,
                    w.sz + ((size_t)p * n_groups + g0) * kQGroupFloats, ng, G, y + (size_t)m * ldy + (size_t)p * kPanel,
                    ldy, tail_mask(cols), tail_mask(cols - 16), acc);
        }
        m += rows;
      }
    }
  }
}

constexpr int kSmallM = 4;

void qgemm_avx512(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                  bool accumulate) {
  if (M <= 0 || p_begin >= p_end) return;
  if (w.bits == 4) {
    if (M <= kSmallM) qgemm_small<4>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
    else if (M <= kMR) qgemm_big<4>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
    else qgemm_dequant_once<4>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
  } else {
    if (M <= kSmallM) qgemm_small<8>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
    else if (M <= kMR) qgemm_big<8>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
    else qgemm_dequant_once<8>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
  }
}

const QKernelTable kTable{"avx512", qgemm_avx512};

}  // namespace

const QKernelTable* avx512_qkernels() { return &kTable; }

}  // namespace turbolm::kernels
