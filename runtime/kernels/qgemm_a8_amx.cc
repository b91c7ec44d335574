// AMX-INT8 quantized GEMM with int8 activations (W4A8 / W8A8; the arithmetic is fixed in qgemm.h)
// for blocks of 16 rows; the other rows, and group sizes that are not a multiple of 64, go to the
// VNNI kernel. Compiled with AVX-512 F/BW/VL/DQ + VNNI + VBMI + AMX-TILE/INT8 flags; reached only
// through amx_qkernels() after qdispatch.cc checked the CPU and got the kernel's permission to
// use the tile state (isa.h cpu_has_amx_int8).
//
// One tdpbsud multiplies A = 16 rows x 64 k of xq (s8, read in place with the row stride ldq) by
// B = 16 k-quads x 16 columns (u8, 64 B per row: exactly the VNNI operand `lo` / `hi` of
// qgemm_a8_common.h) into C = 16 x 16 int32. A panel's weights are transposed into B rows once
// per call, into a per-thread buffer every row block reads:
//   bq[half][k / 4][16 columns][4 bytes]            half 0: columns 0..15, half 1: 16..31
// Per 64 k (two activation blocks of 32): C = 0; one tdpbsud pair per block, the other block's
// bytes of A zeroed (xe / xo); the C tiles stored and folded into y row by row, block by block.
// The integer sums are exact and the fold is the VNNI kernel's, so the rows are bit-identical to
// it (and to the reference) whichever kernel computes them: batch invariance holds across the split.
//
// Tile state (amx_tiles.h): tiles 0, 1 | 5, 6 = C of the two blocks, 2 = A, 3, 4 = B.
#include <cstdlib>

#include "amx_tiles.h"
#include "qgemm_a8_common.h"
#include "scratch.h"

namespace turbolm::kernels {
namespace {

constexpr int kTileK = 64;  // k per tile op: A's bytes per row, B's rows x 4

// Panel p's K rows as B tiles: bq[0] = `lo` rows, bq[1] = `hi` rows, 64 B per k-quad.
template <int BITS>
void transpose_panel(const uint8_t* q, int K, uint8_t* lo_rows, uint8_t* hi_rows, const Consts& k) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  for (int kq = 0; kq < K / 4; ++kq) {
    __m512i lo, hi;
    load_quad<BITS>(q + (size_t)kq * 4 * RB, k, lo, hi);
    _mm512_store_si512(lo_rows + (size_t)kq * 64, lo);
    _mm512_store_si512(hi_rows + (size_t)kq * 64, hi);
  }
}

template <int BITS>
void qgemm_a8_amx_t(const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                    bool accumulate) {
  constexpr int RB = BITS == 4 ? kRB4 : kRB8;
  configure_tiles();
  const Consts k = make_consts();
  const int G = w.group_size, n_groups = w.K / G, K = w.K;
  const int full_rows = M / kTileRows * kTileRows;
  thread_local Scratch scratch;
  uint8_t* lo_rows = scratch.get<uint8_t>((size_t)K * 32 + 4 * 16 * 16 * sizeof(int32_t) + (size_t)2 * full_rows * K);
  if (lo_rows == nullptr) return avx512_vnni_qkernels()->qgemm_a8(x, w, y, ldy, M, p_begin, p_end, accumulate);
  uint8_t* hi_rows = lo_rows + (size_t)K * 16;
  int32_t* cbuf = reinterpret_cast<int32_t*>(hi_rows + (size_t)K * 16);  // [4][16 rows][16 columns]
  // The activation blocks are 32 k, a tile step 64: xe keeps the first block of every step and
  // zeroes the second, xo the reverse, so one step gives the two blocks' sums in separate tiles.
  int8_t* xe = reinterpret_cast<int8_t*>(cbuf + 4 * 256);  // [full_rows][K]
  int8_t* xo = xe + (size_t)full_rows * K;
  const __mmask64 first = 0x00000000ffffffffull;
  for (int r = 0; r < full_rows; ++r)
    for (int k0 = 0; k0 < K; k0 += kTileK) {
      const __m512i v = _mm512_loadu_si512(x.q + (size_t)r * x.ldq + k0);
      _mm512_storeu_si512(xe + (size_t)r * K + k0, _mm512_maskz_mov_epi8(first, v));
      _mm512_storeu_si512(xo + (size_t)r * K + k0, _mm512_maskz_mov_epi8(~first, v));
    }
  for (int p = p_begin; p < p_end; ++p) {
    const int cols = w.N - p * kPanel;
    const __mmask16 m0 = tail_mask(cols), m1 = tail_mask(cols - 16);
    transpose_panel<BITS>(w.q + (size_t)p * K * RB, K, lo_rows, hi_rows, k);
    const float* szp = w.sz + (size_t)p * n_groups * kQGroupFloats;
    for (int r0 = 0; r0 < full_rows; r0 += kTileRows) {
      for (int k0 = 0; k0 < K; k0 += kTileK) {  // activation blocks j = k0 / 32 and j + 1
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(5);
        _tile_zero(6);
        _tile_loadd(3, lo_rows + (size_t)k0 * 16, 64);
        _tile_loadd(4, hi_rows + (size_t)k0 * 16, 64);
        _tile_loadd(2, xe + (size_t)r0 * K + k0, K);
        _tile_dpbsud(0, 2, 3);
        _tile_dpbsud(1, 2, 4);
        _tile_loadd(2, xo + (size_t)r0 * K + k0, K);
        _tile_dpbsud(5, 2, 3);
        _tile_dpbsud(6, 2, 4);
        _tile_stored(0, cbuf, 64);
        _tile_stored(1, cbuf + 256, 64);
        _tile_stored(5, cbuf + 512, 64);
        _tile_stored(6, cbuf + 768, 64);
        const int g = k0 / G, j = k0 / kActBlock;
        const float* s = szp + (size_t)g * kQGroupFloats;
        const __m512 s0 = _mm512_loadu_ps(s), s1 = _mm512_loadu_ps(s + 16);
        const __m512 z0 = _mm512_loadu_ps(s + 32), z1 = _mm512_loadu_ps(s + 48);
        for (int m = 0; m < kTileRows; ++m) {
          const size_t row = (size_t)(r0 + m);
          float* yr = y + row * ldy + (size_t)p * kPanel;
          fold_row(yr, _mm512_load_si512(cbuf + 16 * m), _mm512_load_si512(cbuf + 256 + 16 * m), s0, s1, z0, z1,
                   x.scale[row * x.ldg + j], x.sum[row * x.ldg + j], !accumulate && k0 == 0, m0, m1);
          fold_row(yr, _mm512_load_si512(cbuf + 512 + 16 * m), _mm512_load_si512(cbuf + 768 + 16 * m), s0, s1, z0,
                   z1, x.scale[row * x.ldg + j + 1], x.sum[row * x.ldg + j + 1], false, m0, m1);
        }
      }
    }
  }
  if (full_rows < M) {  // the last rows, by the VNNI kernel (the same numbers)
    QActs rest = x;
    rest.q += (size_t)full_rows * x.ldq;
    rest.scale += (size_t)full_rows * x.ldg;
    rest.sum += (size_t)full_rows * x.ldg;
    avx512_vnni_qkernels()->qgemm_a8(rest, w, y + (size_t)full_rows * ldy, ldy, M - full_rows, p_begin, p_end,
                                     accumulate);
  }
}

void qgemm_a8_amx(const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                  bool accumulate) {
  if (M <= 0 || p_begin >= p_end) return;
  if (M < kTileRows || w.group_size % kTileK || x.B != kActBlock)
    return avx512_vnni_qkernels()->qgemm_a8(x, w, y, ldy, M, p_begin, p_end, accumulate);
  for_row_passes(M, [&](int r, int rows) {  // bounds the per-thread copies of A (2 x rows x K bytes)
    QActs xr = x;
    xr.q += (size_t)r * x.ldq;
    xr.scale += (size_t)r * x.ldg;
    xr.sum += (size_t)r * x.ldg;
    if (w.bits == 4) qgemm_a8_amx_t<4>(xr, w, y + (size_t)r * ldy, ldy, rows, p_begin, p_end, accumulate);
    else qgemm_a8_amx_t<8>(xr, w, y + (size_t)r * ldy, ldy, rows, p_begin, p_end, accumulate);
  });
}

}  // namespace

const QKernelTable* amx_qkernels() {
  static const QKernelTable t{"amx", avx512_qkernels()->qgemm, avx512_qkernels()->quantize_acts, qgemm_a8_amx, true};
  return &t;
}

}  // namespace turbolm::kernels
