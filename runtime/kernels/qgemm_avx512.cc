// AVX-512 quantized GEMM (int4 / int8 weights, fp32 activations). Like kernels_avx512.cc: compiled
// with AVX-512 flags, file-local, reached only through avx512_qkernels() after dispatch checked the
// CPU, and calls no inline function of a shared header (constant expressions only).
//
// One arithmetic for every path and every M (batch invariance: a row's output is bit-identical
// whether it is computed alone or among any number of rows, so a seeded request samples the same
// tokens whatever else shares the batch). For each output y[m, n]:
//   acc = accumulate ? y : 0
//   per group g of G k-rows, in order:  c = 0;  c = fma(x[k], float(q[k]), c) for k in g, in order
//                                       acc = fma(c, s_g, acc) - zs_g * xsum_g   (one fnmadd)
//   y = acc
// where xsum_g = group_sum(x row, g): sum of x over the group, computed one way only (below).
// A call that stops mid-way (k chunks) stores acc to y and resumes from it: fp32 to fp32, exact.
// The paths differ only in how they get float(q) and how many independent chains they run:
// - small M (decode, M <= 4): q converted in registers, P panels at once for independent chains;
// - M <= 12 (one row block): q converted in registers, each k-row shared by the MR rows;
// - several row blocks (batched decode, prefill): a block of panels x k-rows is converted once
//   into a per-thread fp32 buffer that every row block reads (qgemm_dequant_once).
#include <immintrin.h>

#include <cstdlib>

#include "qgemm.h"
#include "scratch.h"

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

// ---- the shared pieces of the arithmetic -------------------------------------------------------
// Sum of x over one group (G a multiple of 16): 16-lane partial sums in k order, then one reduce.
inline float group_sum(const float* xr, int G) {
  __m512 s = _mm512_loadu_ps(xr);
  for (int k = 16; k < G; k += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(xr + k));
  return _mm512_reduce_add_ps(s);
}

// xs[m * ldxs + g] = group_sum of row m over groups [g0, g0 + ng).
inline void group_sums(const float* x, int ldx, int M, int g0, int ng, int G, float* xs, int ldxs) {
  for (int m = 0; m < M; ++m)
    for (int g = 0; g < ng; ++g) xs[m * ldxs + g] = group_sum(x + (size_t)m * ldx + (size_t)(g0 + g) * G, G);
}

// One group's contribution folded into acc: acc = fma(c, s, acc) - zs * xsum.
inline __m512 fold(__m512 acc, __m512 c, __m512 s, __m512 zs, float xsum) {
  return _mm512_fnmadd_ps(zs, _mm512_set1_ps(xsum), _mm512_fmadd_ps(c, s, acc));
}

// ---- small M: P panels per call ---------------------------------------------------------------
// Groups [0, n_groups) of P adjacent full panels (or one masked panel when P == 1), starting at
// k-row `q` / scale block `sz` of the first; x points at the chunk's first k; xs[m * kXS + g].
constexpr int kXS = 64;  // groups per chunk of the xsum table
#ifndef TURBOLM_QP1
#define TURBOLM_QP1 4
#endif
#ifndef TURBOLM_QPF
#define TURBOLM_QPF 32
#endif

template <int MR, int P, int BITS>
void micro_small(const float* x, int ldx, const uint8_t* q, const float* sz, size_t q_pstride, size_t sz_pstride,
                 int n_groups, int G, const float* xs, float* y, int ldy, __mmask16 m0, __mmask16 m1,
                 bool accumulate) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  __m512 acc[P][MR][2];
  for (int i = 0; i < P; ++i)
    for (int m = 0; m < MR; ++m) {
      const float* yr = y + (size_t)m * ldy + i * kPanel;
      acc[i][m][0] = accumulate ? _mm512_maskz_loadu_ps(m0, yr) : _mm512_setzero_ps();
      acc[i][m][1] = accumulate ? _mm512_maskz_loadu_ps(m1, yr + 16) : _mm512_setzero_ps();
    }
  for (int g = 0; g < n_groups; ++g) {
    __m512 c[P][MR][2];
    for (int i = 0; i < P; ++i)
      for (int m = 0; m < MR; ++m) c[i][m][0] = c[i][m][1] = _mm512_setzero_ps();
    const float* xg = x + (size_t)g * G;
    constexpr int kRowsPerLine = 64 / RB;  // k-rows per cache line: one prefetch per line and panel
    for (int k = 0; k < G; ++k) {
      for (int i = 0; i < P; ++i) {
        const uint8_t* row = q + i * q_pstride + (size_t)(g * G + k) * RB;
        if (k % kRowsPerLine == 0) _mm_prefetch((const char*)(row + TURBOLM_QPF * RB), _MM_HINT_T0);
        __m512 w0, w1;
        load_row<BITS>(row, w0, w1);
        for (int m = 0; m < MR; ++m) {
          const __m512 xb = _mm512_set1_ps(xg[(size_t)m * ldx + k]);
          c[i][m][0] = _mm512_fmadd_ps(xb, w0, c[i][m][0]);
          c[i][m][1] = _mm512_fmadd_ps(xb, w1, c[i][m][1]);
        }
      }
    }
    for (int i = 0; i < P; ++i) {
      const float* s = sz + i * sz_pstride + (size_t)g * kQGroupFloats;
      const __m512 s0 = _mm512_loadu_ps(s), s1 = _mm512_loadu_ps(s + 16);
      const __m512 z0 = _mm512_loadu_ps(s + 32), z1 = _mm512_loadu_ps(s + 48);
      for (int m = 0; m < MR; ++m) {
        acc[i][m][0] = fold(acc[i][m][0], c[i][m][0], s0, z0, xs[m * kXS + g]);
        acc[i][m][1] = fold(acc[i][m][1], c[i][m][1], s1, z1, xs[m * kXS + g]);
      }
    }
  }
  for (int i = 0; i < P; ++i)
    for (int m = 0; m < MR; ++m) {
      float* yr = y + (size_t)m * ldy + i * kPanel;
      _mm512_mask_storeu_ps(yr, m0, acc[i][m][0]);
      _mm512_mask_storeu_ps(yr + 16, m1, acc[i][m][1]);
    }
}

template <int BITS>
void qgemm_small(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                 bool accumulate) {
  using Fn = void (*)(const float*, int, const uint8_t*, const float*, size_t, size_t, int, int, const float*, float*,
                      int, __mmask16, __mmask16, bool);
  // Independent chains per call: MR rows x 2 halves x P panels >= 8 hides the FMA latency.
  static constexpr Fn kWide[5] = {nullptr, micro_small<1, TURBOLM_QP1, BITS>, micro_small<2, 2, BITS>, micro_small<3, 1, BITS>,
                                  micro_small<4, 1, BITS>};
  static constexpr int kP[5] = {0, TURBOLM_QP1, 2, 1, 1};
  static constexpr Fn kOne[5] = {nullptr, micro_small<1, 1, BITS>, micro_small<2, 1, BITS>, micro_small<3, 1, BITS>,
                                 micro_small<4, 1, BITS>};
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  const int G = w.group_size, n_groups = w.K / G;
  const size_t q_pstride = (size_t)w.K * RB, sz_pstride = (size_t)n_groups * kQGroupFloats;
  const int full_end = w.N / kPanel < p_end ? w.N / kPanel : p_end;
  alignas(64) float xs[4 * kXS];
  for (int g0 = 0; g0 < n_groups; g0 += kXS) {
    const int ng = n_groups - g0 < kXS ? n_groups - g0 : kXS;
    group_sums(x, ldx, M, g0, ng, G, xs, kXS);
    const bool acc = accumulate || g0 > 0;
    auto call = [&](const Fn* fns, int p, __mmask16 m0, __mmask16 m1) {
      fns[M](x + (size_t)g0 * G, ldx, w.q + ((size_t)p * w.K + (size_t)g0 * G) * RB,
             w.sz + ((size_t)p * n_groups + g0) * kQGroupFloats, q_pstride, sz_pstride, ng, G, xs,
             y + (size_t)p * kPanel, ldy, m0, m1, acc);
    };
    int p = p_begin;
    for (; p + kP[M] <= full_end; p += kP[M]) call(kWide, p, 0xffff, 0xffff);
    for (; p < p_end; ++p) {
      const int cols = w.N - p * kPanel;
      call(kOne, p, tail_mask(cols), tail_mask(cols - 16));
    }
  }
}

// ---- one row block (M <= 12): q converted in registers, shared by the MR rows -------------------
// Folds one group's chains c (MR rows) into y: acc = (first && !accumulate ? 0 : y), then fold.
// Masked loads of masked stores defeat store forwarding (each fold would wait for the store to
// reach the cache), so a full panel -- all but the last -- uses plain loads and stores.
template <int MR>
inline void fold_into_y(__m512 (*c)[2], const float* s, const float* xs, int ldxs, float* y, int ldy,
                        __mmask16 m0, __mmask16 m1, bool from_zero) {
  const __m512 s0 = _mm512_loadu_ps(s), s1 = _mm512_loadu_ps(s + 16);
  const __m512 z0 = _mm512_loadu_ps(s + 32), z1 = _mm512_loadu_ps(s + 48);
  const bool full = m0 == 0xffff && m1 == 0xffff;
  for (int m = 0; m < MR; ++m) {
    float* yr = y + (size_t)m * ldy;
    const float xsum = xs[m * ldxs];
    if (full) {
      const __m512 a0 = from_zero ? _mm512_setzero_ps() : _mm512_loadu_ps(yr);
      const __m512 a1 = from_zero ? _mm512_setzero_ps() : _mm512_loadu_ps(yr + 16);
      _mm512_storeu_ps(yr, fold(a0, c[m][0], s0, z0, xsum));
      _mm512_storeu_ps(yr + 16, fold(a1, c[m][1], s1, z1, xsum));
    } else {
      const __m512 a0 = from_zero ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, yr);
      const __m512 a1 = from_zero ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, yr + 16);
      _mm512_mask_storeu_ps(yr, m0, fold(a0, c[m][0], s0, z0, xsum));
      _mm512_mask_storeu_ps(yr + 16, m1, fold(a1, c[m][1], s1, z1, xsum));
    }
  }
}

// Groups [0, n_groups) of one panel for MR rows; xs[m * ldxs + g] their group sums.
template <int MR, int BITS>
void micro_big(const float* x, int ldx, const uint8_t* q, const float* sz, int n_groups, int G, const float* xs,
               int ldxs, float* y, int ldy, __mmask16 m0, __mmask16 m1, bool accumulate) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  for (int g = 0; g < n_groups; ++g) {
    __m512 c[MR][2];
    for (int m = 0; m < MR; ++m) c[m][0] = c[m][1] = _mm512_setzero_ps();
    const uint8_t* qg = q + (size_t)g * G * RB;
    const float* xg = x + (size_t)g * G;
    for (int k = 0; k < G; ++k) {
      __m512 w0, w1;
      load_row<BITS>(qg + (size_t)k * RB, w0, w1);
      for (int m = 0; m < MR; ++m) {
        const __m512 xb = _mm512_set1_ps(xg[(size_t)m * ldx + k]);
        c[m][0] = _mm512_fmadd_ps(xb, w0, c[m][0]);
        c[m][1] = _mm512_fmadd_ps(xb, w1, c[m][1]);
      }
    }
    fold_into_y<MR>(c, sz + (size_t)g * kQGroupFloats, xs + g, ldxs, y, ldy, m0, m1, g == 0 && !accumulate);
  }
}

constexpr int kMR = 12;

// ---- several row blocks: q converted once per block into an fp32 buffer --------------------------
// Converting each k-row per row block costs ~5 vector ops per 24 FMAs; a block of kNCD panels x
// k-rows converted once (L2-resident: kNCD x <= 256 rows x 128 B) is read by every row block with
// two loads per k-row and no integer work.
constexpr int kNCD = 8;

template <int MR>
void micro_f32(const float* x, int ldx, const float* wb, const float* sz, int n_groups, int G, const float* xs,
               int ldxs, float* y, int ldy, __mmask16 m0, __mmask16 m1, bool accumulate) {
  for (int g = 0; g < n_groups; ++g) {
    __m512 c[MR][2];
    for (int m = 0; m < MR; ++m) c[m][0] = c[m][1] = _mm512_setzero_ps();
    const float* wg = wb + (size_t)g * G * kPanel;
    const float* xg = x + (size_t)g * G;
    for (int k = 0; k < G; ++k) {
      const __m512 w0 = _mm512_loadu_ps(wg + (size_t)k * kPanel), w1 = _mm512_loadu_ps(wg + (size_t)k * kPanel + 16);
      for (int m = 0; m < MR; ++m) {
        const __m512 xb = _mm512_set1_ps(xg[(size_t)m * ldx + k]);
        c[m][0] = _mm512_fmadd_ps(xb, w0, c[m][0]);
        c[m][1] = _mm512_fmadd_ps(xb, w1, c[m][1]);
      }
    }
    fold_into_y<MR>(c, sz + (size_t)g * kQGroupFloats, xs + g, ldxs, y, ldy, m0, m1, g == 0 && !accumulate);
  }
}

// Panel rows [0, rows) of one panel as float(q): wb[k][32].
template <int BITS>
void convert_panel(const uint8_t* q, int rows, float* wb) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  for (int k = 0; k < rows; ++k) {
    __m512 w0, w1;
    load_row<BITS>(q + (size_t)k * RB, w0, w1);
    _mm512_storeu_ps(wb + (size_t)k * kPanel, w0);
    _mm512_storeu_ps(wb + (size_t)k * kPanel + 16, w1);
  }
}

template <int BITS>
void qgemm_big(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
               bool accumulate);

template <int BITS>
void qgemm_dequant_once(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin,
                        int p_end, bool accumulate) {
  using Fn = void (*)(const float*, int, const float*, const float*, int, int, const float*, int, float*, int,
                      __mmask16, __mmask16, bool);
  static constexpr Fn kFn[kMR + 1] = {nullptr,       micro_f32<1>,  micro_f32<2>,  micro_f32<3>, micro_f32<4>,
                                      micro_f32<5>,  micro_f32<6>,  micro_f32<7>,  micro_f32<8>, micro_f32<9>,
                                      micro_f32<10>, micro_f32<11>, micro_f32<12>};
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  const int G = w.group_size, n_groups = w.K / G;
  const int kc_groups = G >= 256 ? 1 : 256 / G;
  const int n_blocks = (M + kMR - 1) / kMR;
  thread_local Scratch tl, tl_xs;  // [kNCD][kc][kPanel] of this thread's current block; [M][kc_groups]
  float* buf = tl.get<float>((size_t)kNCD * kc_groups * G * kPanel);
  float* xs = tl_xs.get<float>((size_t)M * kc_groups);
  if (buf == nullptr || xs == nullptr) return qgemm_big<BITS>(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
  for (int p0 = p_begin; p0 < p_end; p0 += kNCD) {
    const int p1 = p_end - p0 < kNCD ? p_end : p0 + kNCD;
    for (int g0 = 0; g0 < n_groups; g0 += kc_groups) {
      const int ng = n_groups - g0 < kc_groups ? n_groups - g0 : kc_groups;
      const int k0 = g0 * G, kc = ng * G;
      group_sums(x, ldx, M, g0, ng, G, xs, kc_groups);
      for (int p = p0; p < p1; ++p)
        convert_panel<BITS>(w.q + ((size_t)p * w.K + k0) * RB, kc, buf + (size_t)(p - p0) * kc * kPanel);
      const bool acc = accumulate || g0 > 0;
      int m = 0;
      for (int b = 0; b < n_blocks; ++b) {
        const int rows = (M - m + (n_blocks - b) - 1) / (n_blocks - b);
        for (int p = p0; p < p1; ++p) {
          const int cols = w.N - p * kPanel;
          kFn[rows](x + (size_t)m * ldx + k0, ldx, buf + (size_t)(p - p0) * kc * kPanel,
                    w.sz + ((size_t)p * n_groups + g0) * kQGroupFloats, ng, G, xs + (size_t)m * kc_groups, kc_groups,
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
  using Fn = void (*)(const float*, int, const uint8_t*, const float*, int, int, const float*, int, float*, int,
                      __mmask16, __mmask16, bool);
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
  alignas(64) float xs[kMR * 16];  // [rows][kc_groups] of one row block: kc_groups <= 256 / 16
  const int ldxs = kc_groups;
  for (int p0 = p_begin; p0 < p_end; p0 += kNC) {
    const int p1 = p_end - p0 < kNC ? p_end : p0 + kNC;
    for (int g0 = 0; g0 < n_groups; g0 += kc_groups) {
      const int ng = n_groups - g0 < kc_groups ? n_groups - g0 : kc_groups;
      const int k0 = g0 * G;
      const bool acc = accumulate || g0 > 0;
      int m = 0;
      for (int b = 0; b < n_blocks; ++b) {
        const int rows = (M - m + (n_blocks - b) - 1) / (n_blocks - b);
        group_sums(x + (size_t)m * ldx, ldx, rows, g0, ng, G, xs, ldxs);
        for (int p = p0; p < p1; ++p) {
          const int cols = w.N - p * kPanel;
          kFn[rows](x + (size_t)m * ldx + k0, ldx, w.q + ((size_t)p * w.K + k0) * RB,
                    w.sz + ((size_t)p * n_groups + g0) * kQGroupFloats, ng, G, xs, ldxs,
                    y + (size_t)m * ldy + (size_t)p * kPanel, ldy, tail_mask(cols), tail_mask(cols - 16), acc);
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

// ---- int8 activations: the quantizer (qgemm.h); the product is emulated without VNNI ----------
void quantize_acts_avx512(const float* x, int ldx, int M, int K, int G, int8_t* xq, int ldq, float* a, float* xsum,
                          int ldg) {  // G: the block (act_block of the weight's group size)
  const __m512 sign = _mm512_set1_ps(-0.f);
  for (int m = 0; m < M; ++m)
    for (int g = 0; g < K / G; ++g) {
      const float* xg = x + (size_t)m * ldx + (size_t)g * G;
      __m512 mx = _mm512_setzero_ps();
      for (int k = 0; k < G; k += 16) mx = _mm512_max_ps(mx, _mm512_andnot_ps(sign, _mm512_loadu_ps(xg + k)));
      const float amax = _mm512_reduce_max_ps(mx);
      const __m512 inv = _mm512_set1_ps(amax > kActTinyAmax ? 127.f / amax : 0.f);
      int8_t* out = xq + (size_t)m * ldq + (size_t)g * G;
      __m512i isum = _mm512_setzero_si512();
      for (int k = 0; k < G; k += 16) {  // cvtps rounds half to even (MXCSR default), as nearbyint
        const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + k), inv));  // |q| <= 127
        _mm_storeu_si128((__m128i*)(out + k), _mm512_cvtsepi32_epi8(q));
        isum = _mm512_add_epi32(isum, q);
      }
      a[(size_t)m * ldg + g] = amax / 127.f;
      xsum[(size_t)m * ldg + g] = amax / 127.f * (float)_mm512_reduce_add_epi32(isum);
    }
}

void qgemm_a8_avx512(const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                     bool accumulate) {
  qgemm_a8_via_fp32(qgemm_avx512, x, w, y, ldy, M, p_begin, p_end, accumulate);
}

const QKernelTable kTable{"avx512", qgemm_avx512, quantize_acts_avx512, qgemm_a8_avx512, false};

}  // namespace

const QKernelTable* avx512_qkernels() { return &kTable; }

}  // namespace turbolm::kernels
