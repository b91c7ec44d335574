// Private to the int8-activation kernels (qgemm_a8_avx512vnni.cc, qgemm_a8_amx.cc): four packed
// k-rows of a panel as VNNI operands, and the per-group fold of qgemm.h. Everything here has
// internal linkage, so each ISA-flagged file gets its own copy (no inline function compiled with
// one file's flags can be picked by the linker for the other).
#pragma once
#include <immintrin.h>

#include <cstring>

#include "qgemm.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // the intrinsics' undefined pass-through operands

namespace turbolm::kernels {
namespace {

constexpr int kRB4 = kQRowBytes(4), kRB8 = kQRowBytes(8);

inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

// Byte permutes: result byte 4j + r takes row r's column j (int4: from one 64 B load of 4 rows x
// 16 B; int8: from 128 B of 4 rows x 32 B, `hi` the columns j + 16).
struct Idx {
  uint8_t b[64];
};
constexpr Idx make_idx(int row_stride, int col0) {
  Idx r{};
  for (int j = 0; j < 16; ++j)
    for (int row = 0; row < 4; ++row) r.b[4 * j + row] = (uint8_t)(row_stride * row + col0 + j);
  return r;
}
alignas(64) constexpr Idx kIdx4 = make_idx(kRB4, 0), kIdx8Lo = make_idx(kRB8, 0), kIdx8Hi = make_idx(kRB8, 16);
static_assert(kRB4 * 4 == 64 && kRB8 * 4 == 128, "four k-rows: one (int4) or two (int8) 64-byte loads");

struct Consts {
  __m512i i4, i8lo, i8hi, nib;
};

template <int BITS>
inline void load_quad(const uint8_t* q, const Consts& c, __m512i& lo, __m512i& hi) {
  if constexpr (BITS == 4) {
    const __m512i t = _mm512_permutexvar_epi8(c.i4, _mm512_loadu_si512(q));
    lo = _mm512_and_si512(t, c.nib);
    hi = _mm512_and_si512(_mm512_srli_epi16(t, 4), c.nib);
  } else {
    const __m512i a = _mm512_loadu_si512(q), b = _mm512_loadu_si512(q + 64);
    lo = _mm512_permutex2var_epi8(a, c.i8lo, b);
    hi = _mm512_permutex2var_epi8(a, c.i8hi, b);
  }
}

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// One group's int32 sums of one row folded into y (qgemm.h's order): c0 / c1 the columns 0..15 /
// 16..31; s0, s1, z0, z1 the group's scales and zs; a, xsum the row's. Masked loads of masked
// stores defeat store forwarding, so a full panel uses plain ones.
inline void fold_row(float* yr, __m512i c0, __m512i c1, __m512 s0, __m512 s1, __m512 z0, __m512 z1, float a,
                     float xsum, bool zero, __mmask16 m0, __mmask16 m1) {
  const __m512 am = _mm512_set1_ps(a), xs = _mm512_set1_ps(xsum);
  const bool full = m0 == 0xffff && m1 == 0xffff;
  __m512 a0, a1;
  if (zero) a0 = a1 = _mm512_setzero_ps();
  else if (full) a0 = _mm512_loadu_ps(yr), a1 = _mm512_loadu_ps(yr + 16);
  else a0 = _mm512_maskz_loadu_ps(m0, yr), a1 = _mm512_maskz_loadu_ps(m1, yr + 16);
  a0 = _mm512_fnmadd_ps(z0, xs, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c0), _mm512_mul_ps(s0, am), a0));
  a1 = _mm512_fnmadd_ps(z1, xs, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c1), _mm512_mul_ps(s1, am), a1));
  if (full) {
    _mm512_storeu_ps(yr, a0);
    _mm512_storeu_ps(yr + 16, a1);
  } else {
    _mm512_mask_storeu_ps(yr, m0, a0);
    _mm512_mask_storeu_ps(yr + 16, m1, a1);
  }
}

inline Consts make_consts() {
  return Consts{_mm512_load_si512(kIdx4.b), _mm512_load_si512(kIdx8Lo.b), _mm512_load_si512(kIdx8Hi.b),
                _mm512_set1_epi8(0x0f)};
}

}  // namespace
}  // namespace turbolm::kernels
