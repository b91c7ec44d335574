// AVX-512 VNNI quantized GEMM with int8 activations (W4A8 / W8A8; the arithmetic is fixed in
// qgemm.h). Compiled with AVX-512 F/BW/VL/DQ + VNNI + VBMI flags; reached only through
// avx512_vnni_qkernels() after qdispatch.cc checked the CPU for all of them (isa.h).
//
// The weights keep the QPackedMatrix layout (one k-row of a panel = 16 B int4 / 32 B int8). VNNI's
// vpdpbusd wants, per 32-bit lane, four consecutive k of one column: four k-rows are transposed in
// registers with one VBMI byte permute (int4: vpermb of 64 B; int8: vpermt2b of 2 x 64 B), so the
// same packed weights serve the fp32-activation and the int8-activation paths.
//   lane j of `lo` = q[k..k+3, column j], of `hi` = q[k..k+3, column j + 16]      (u8, 4 bytes)
//   the broadcast activation = xq[m, k..k+3]                                      (s8, 4 bytes)
// so c[m][half] += sum of 4 u8 x s8 products per lane, exactly, in int32 (|c| <= G * 255 * 127).
//
// Every path folds each group into y in the same order (qgemm.h), so a row's output does not
// depend on M, the row blocking, the panel split or the k chunking: batch invariance is exact.
#include "qgemm_a8_common.h"


namespace turbolm::kernels {
namespace {

// Groups [0, n_groups) of P adjacent panels (full ones, or one masked panel when P == 1) for MR
// rows, folded per activation block of B k (G / B blocks per group). xq / a / xs point at row
// 0's first k / block of the chunk; q / sz at the first panel's.
template <int MR, int P, int BITS>
void micro(const int8_t* xq, int ldq, const float* a, const float* xs, int ldg, const uint8_t* q, const float* sz,
           size_t q_pstride, size_t sz_pstride, int n_groups, int G, int B, float* y, int ldy, __mmask16 m0,
           __mmask16 m1, bool from_zero, const Consts& k) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  const int n_blocks = n_groups * (G / B);
  for (int j = 0; j < n_blocks; ++j) {
    __m512i c[P][MR][2];
    for (int i = 0; i < P; ++i)
      for (int m = 0; m < MR; ++m) c[i][m][0] = c[i][m][1] = _mm512_setzero_si512();
    const int8_t* xb0 = xq + (size_t)j * B;
    for (int kk = 0; kk < B; kk += 4) {
      for (int i = 0; i < P; ++i) {
        const uint8_t* rows = q + i * q_pstride + (size_t)(j * B + kk) * RB;
        _mm_prefetch((const char*)(rows + 16 * 4 * RB), _MM_HINT_T0);
        __m512i lo, hi;
        load_quad<BITS>(rows, k, lo, hi);
        for (int m = 0; m < MR; ++m) {
          const __m512i xb = bcast4(xb0 + (size_t)m * ldq + kk);
          c[i][m][0] = _mm512_dpbusd_epi32(c[i][m][0], lo, xb);
          c[i][m][1] = _mm512_dpbusd_epi32(c[i][m][1], hi, xb);
        }
      }
    }
    const bool zero = from_zero && j == 0;
    const int g = j * B / G;
    for (int i = 0; i < P; ++i) {
      const float* s = sz + i * sz_pstride + (size_t)g * kQGroupFloats;
      const __m512 s0 = _mm512_loadu_ps(s), s1 = _mm512_loadu_ps(s + 16);
      const __m512 z0 = _mm512_loadu_ps(s + 32), z1 = _mm512_loadu_ps(s + 48);
      for (int m = 0; m < MR; ++m)
        fold_row(y + (size_t)m * ldy + i * kPanel, c[i][m][0], c[i][m][1], s0, s1, z0, z1, a[(size_t)m * ldg + j],
                 xs[(size_t)m * ldg + j], zero, m0, m1);
    }
  }
}

using MicroFn = void (*)(const int8_t*, int, const float*, const float*, int, const uint8_t*, const float*, size_t,
                         size_t, int, int, int, float*, int, __mmask16, __mmask16, bool, const Consts&);

constexpr int kMR = 12;     // rows per block (24 int32 accumulators + 6 operand registers)
constexpr int kSmallM = 4;  // up to here: all rows at once, P panels per call for independent chains
constexpr int kNC = 16;     // panels per block for several row blocks (their k-slices stay in L2)

template <int BITS>
void qgemm_a8_t(const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                bool accumulate) {
  static constexpr MicroFn kOne[kMR + 1] = {
      nullptr, micro<1, 1, BITS>, micro<2, 1, BITS>, micro<3, 1, BITS>, micro<4, 1, BITS>, micro<5, 1, BITS>,
      micro<6, 1, BITS>, micro<7, 1, BITS>, micro<8, 1, BITS>, micro<9, 1, BITS>, micro<10, 1, BITS>,
      micro<11, 1, BITS>, micro<12, 1, BITS>};
  // Independent chains: MR rows x 2 halves x P panels >= 8 hides vpdpbusd's latency.
  static constexpr MicroFn kWide[kSmallM + 1] = {nullptr, micro<1, 4, BITS>, micro<2, 2, BITS>, micro<3, 1, BITS>,
                                                 micro<4, 1, BITS>};
  static constexpr int kP[kSmallM + 1] = {0, 4, 2, 1, 1};
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  const Consts k = make_consts();
  const int G = w.group_size, n_groups = w.K / G;
  const size_t q_pstride = (size_t)w.K * RB, sz_pstride = (size_t)n_groups * kQGroupFloats;
  const int full_end = w.N / kPanel < p_end ? w.N / kPanel : p_end;
  auto call = [&](MicroFn fn, int m, int p, int g0, int ng, __mmask16 m0, __mmask16 m1) {
    const size_t b0 = (size_t)g0 * (G / x.B);  // the chunk's first activation block
    fn(x.q + (size_t)m * x.ldq + (size_t)g0 * G, x.ldq, x.scale + (size_t)m * x.ldg + b0,
       x.sum + (size_t)m * x.ldg + b0, x.ldg, w.q + ((size_t)p * w.K + (size_t)g0 * G) * RB,
       w.sz + ((size_t)p * n_groups + g0) * kQGroupFloats, q_pstride, sz_pstride, ng, G, x.B,
       y + (size_t)m * ldy + (size_t)p * kPanel, ldy, m0, m1, !accumulate && g0 == 0, k);
  };
  if (M <= kSmallM) {  // decode: stream every weight once, whole K per call
    int p = p_begin;
    for (; p + kP[M] <= full_end; p += kP[M]) call(kWide[M], 0, p, 0, n_groups, 0xffff, 0xffff);
    for (; p < p_end; ++p) {
      const int cols = w.N - p * kPanel;
      call(kOne[M], 0, p, 0, n_groups, tail_mask(cols), tail_mask(cols - 16));
    }
    return;
  }
  // Several row blocks: k blocks of whole groups (~256 rows), panels in blocks of kNC.
  const int kc_groups = G >= 256 ? 1 : 256 / G;
  const int n_blocks = (M + kMR - 1) / kMR;
  for (int p0 = p_begin; p0 < p_end; p0 += kNC) {
    const int p1 = p_end - p0 < kNC ? p_end : p0 + kNC;
    for (int g0 = 0; g0 < n_groups; g0 += kc_groups) {
      const int ng = n_groups - g0 < kc_groups ? n_groups - g0 : kc_groups;
      int m = 0;
      for (int b = 0; b < n_blocks; ++b) {
        const int rows = (M - m + (n_blocks - b) - 1) / (n_blocks - b);
        for (int p = p0; p < p1; ++p) {
          const int cols = w.N - p * kPanel;
          call(kOne[rows], m, p, g0, ng, tail_mask(cols), tail_mask(cols - 16));
        }
        m += rows;
      }
    }
  }
}

void qgemm_a8_vnni(const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                   bool accumulate) {
  if (M <= 0 || p_begin >= p_end) return;
  if (w.bits == 4) qgemm_a8_t<4>(x, w, y, ldy, M, p_begin, p_end, accumulate);
  else qgemm_a8_t<8>(x, w, y, ldy, M, p_begin, p_end, accumulate);
}

}  // namespace

// The fp32-activation GEMM and the activation quantizer are the AVX-512 table's (they need no VNNI).
const QKernelTable* avx512_vnni_qkernels() {
  static const QKernelTable t{"avx512_vnni", avx512_qkernels()->qgemm, avx512_qkernels()->quantize_acts,
                              qgemm_a8_vnni, true};
  return &t;
}

}  // namespace turbolm::kernels
