// The AMX-BF16 table: the AVX512-BF16 table with gemm_bf16 on tiles (tdpbf16ps). Compiled with
// AVX-512 F/BW/VL/DQ + BF16 + AMX-TILE/BF16 flags; reached only through amx_bf16_kernels() after
// dispatch checked the CPU and got the tile state (isa.h cpu_has_amx_bf16).
//
// One tdpbf16ps multiplies A = 16 rows x 32 k of bf16 x (the rows of a per-thread buffer, x rounded
// RNE like every table) by B = 16 k-pairs x 16 columns, read in place from the PackedBF16 panels
// (a k-pair of a panel is 128 B: columns 0..15 then 16..31, so B_lo / B_hi are 16 rows at a
// 128-byte stride), into C = 16 x 16 fp32. tdpbf16ps rounds in its own order, not vdpbf16ps', so
// every M runs on the tiles, padded to 16 rows with zeros: a row's C depends on its A row alone,
// so it is bit-identical whatever else is in the batch. K must be a multiple of 32 (one tile
// step); other linears run the AVX512-BF16 kernel, chosen by K alone, never by M.
// Tile state: amx_tiles.h (0, 1, 5, 6 = C of two panels; 2 = A; 3, 4, 7 = B).
#include <immintrin.h>

#include <cstdlib>
#include <cstring>

#include "amx_tiles.h"
#include "kernels.h"
#include "scratch.h"
#include "tables.h"

namespace turbolm::kernels {
namespace {

constexpr int kStepK = 32;  // k per tile op (A: 64 bytes of bf16 per row; B: 16 k-pairs)

inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

void gemm_bf16_amx_rows(const float* x, int ldx, const PackedBF16& w, float* y, int ldy, int M, int p_begin,
                        int p_end, bool accumulate) {
  const int K = w.K;
  configure_tiles();
  const int Mp = (M + kTileRows - 1) / kTileRows * kTileRows, ldb = K;  // ldb: bf16 per row
  thread_local Scratch scratch;
  uint8_t* base = scratch.get<uint8_t>((size_t)Mp * ldb * 2 + 4 * kTileRows * 16 * sizeof(float));
  if (base == nullptr) return reference_kernels().gemm_bf16(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
  uint16_t* xb = reinterpret_cast<uint16_t*>(base);                       // [Mp][K] bf16, rows >= M zero
  float* cbuf = reinterpret_cast<float*>(base + (size_t)Mp * ldb * 2);   // [2 panels][2][16 rows][16 columns]
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; k += 16)
      _mm256_storeu_si256((__m256i*)(xb + (size_t)m * ldb + k),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + (size_t)m * ldx + k)));
  std::memset(xb + (size_t)M * ldb, 0, (size_t)(Mp - M) * ldb * 2);
  const size_t pstride = (size_t)K * kPanel;  // uint16 per panel
  // Two panels at a time: four independent C tiles (0, 1 | 5, 6) hide tdpbf16ps' latency, which
  // a lone panel's two chains cannot at batch 1. B: tiles 3, 4, 7 (the fourth B reuses 3).
  for (int p = p_begin; p < p_end; p += 2) {
    const bool two = p + 1 < p_end;
    for (int r0 = 0; r0 < Mp; r0 += kTileRows) {
      const int rows = M - r0 < kTileRows ? M - r0 : kTileRows;
      for (int i = 0; i < (two ? 2 : 1); ++i) {
        float* cb = cbuf + i * 512;
        if (accumulate) {
          const int cols = w.N - (p + i) * kPanel;
          for (int m = 0; m < kTileRows; ++m) {
            const float* yr = y + (size_t)(r0 + m) * ldy + (size_t)(p + i) * kPanel;
            _mm512_store_ps(cb + 16 * m, m < rows ? _mm512_maskz_loadu_ps(tail_mask(cols), yr) : _mm512_setzero_ps());
            _mm512_store_ps(cb + 256 + 16 * m,
                            m < rows ? _mm512_maskz_loadu_ps(tail_mask(cols - 16), yr + 16) : _mm512_setzero_ps());
          }
        }
      }
      if (accumulate) {
        _tile_loadd(0, cbuf, 64);
        _tile_loadd(1, cbuf + 256, 64);
        if (two) {
          _tile_loadd(5, cbuf + 512, 64);
          _tile_loadd(6, cbuf + 768, 64);
        }
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(5);
        _tile_zero(6);
      }
      const uint16_t* xr = xb + (size_t)r0 * ldb;
      const uint16_t* w0 = w.data + (size_t)p * pstride;
      const uint16_t* w1 = two ? w0 + pstride : w0;
      for (int k0 = 0; k0 < K; k0 += kStepK) {
        const size_t off = (size_t)(k0 / 2) * 2 * kPanel;  // k-pair k0/2 of a panel
        for (int l = 0; l < 2 * kPanel * 2 * 16 / 64; l += 4) {  // the step after next: 32 lines per panel
          _mm_prefetch((const char*)(w0 + off + 2 * 32 * kPanel) + 64 * l, _MM_HINT_T0);
          _mm_prefetch((const char*)(w1 + off + 2 * 32 * kPanel) + 64 * l, _MM_HINT_T0);
        }
        _tile_loadd(2, xr + k0, ldb * 2);
        _tile_loadd(3, w0 + off, 2 * kPanel * 2);
        _tile_loadd(4, w0 + off + kPanel, 2 * kPanel * 2);
        _tile_dpbf16ps(0, 2, 3);
        _tile_dpbf16ps(1, 2, 4);
        if (two) {
          _tile_loadd(7, w1 + off, 2 * kPanel * 2);
          _tile_loadd(3, w1 + off + kPanel, 2 * kPanel * 2);
          _tile_dpbf16ps(5, 2, 7);
          _tile_dpbf16ps(6, 2, 3);
        }
      }
      _tile_stored(0, cbuf, 64);
      _tile_stored(1, cbuf + 256, 64);
      if (two) {
        _tile_stored(5, cbuf + 512, 64);
        _tile_stored(6, cbuf + 768, 64);
      }
      for (int i = 0; i < (two ? 2 : 1); ++i) {
        const int cols = w.N - (p + i) * kPanel;
        const __mmask16 m0 = tail_mask(cols), m1 = tail_mask(cols - 16);
        const float* cb = cbuf + i * 512;
        for (int m = 0; m < rows; ++m) {
          float* yr = y + (size_t)(r0 + m) * ldy + (size_t)(p + i) * kPanel;
          _mm512_mask_storeu_ps(yr, m0, _mm512_load_ps(cb + 16 * m));
          _mm512_mask_storeu_ps(yr + 16, m1, _mm512_load_ps(cb + 256 + 16 * m));
        }
      }
    }
  }
}

void gemm_bf16_amx(const float* x, int ldx, const PackedBF16& w, float* y, int ldy, int M, int p_begin, int p_end,
                   bool accumulate) {
  if (M <= 0 || p_begin >= p_end) return;
  if (w.K % kStepK) return avx512_bf16_kernels()->gemm_bf16(x, ldx, w, y, ldy, M, p_begin, p_end, accumulate);
  for_row_passes(M, [&](int r, int rows) {  // bounds the per-thread bf16 copy of x
    gemm_bf16_amx_rows(x + (size_t)r * ldx, ldx, w, y + (size_t)r * ldy, ldy, rows, p_begin, p_end, accumulate);
  });
}

}  // namespace

const KernelTable* amx_bf16_kernels() {
  static const KernelTable t = [] {
    KernelTable k = *avx512_bf16_kernels();
    k.name = "amx_bf16";
    k.gemm_bf16 = gemm_bf16_amx;
    k.bf16_tiles = true;
    return k;
  }();
  return &t;
}

}  // namespace turbolm::kernels
