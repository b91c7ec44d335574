// AVX-512 paged KV cache kernels: kv_store and attention (decode rows and the multi-query
// prefill blocks). Reached only through the table in kernels_avx512.cc, after dispatch.cc has
// checked the CPU.
#include "avx512_common.h"

// GCC 12 flags its own AVX-512 intrinsic headers (_mm512_undefined_*) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace turbolm::kernels {
namespace {

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

// Scores s[0, n) -> cap · tanh(s / cap) (Gemma 2's attention soft-capping), in place.
inline void softcap_inplace(float* s, int n, float cap) {
  const __m512 c = _mm512_set1_ps(cap), ic = _mm512_set1_ps(1.f / cap);
  for (int t = 0; t < n; t += 16) {
    const __mmask16 m = tail_mask(n - t);
    _mm512_mask_storeu_ps(s + t, m, _mm512_mul_ps(c, tanh512(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + t), ic))));
  }
}

// Walks one kv head's rows in position order from position `start`, block by block: no division
// per key. A block's address is looked up only when its first row is wanted, never past the end.
class RowCursor {
 public:
  RowCursor(const void* base, const PagedKV& kv, int kh, int head_dim, size_t es, int start = 0)
      : base_((const char*)base + (int64_t)kh * kv.head_stride * (int64_t)es), table_(kv.block_table),
        block_bytes_(kv.block_stride * (int64_t)es), row_bytes_((int64_t)head_dim * (int64_t)es),
        block_len_(kv.block_len), block_(start / kv.block_len), slot_(start % kv.block_len) {
    if (slot_) row_ = base_ + table_[block_] * block_bytes_ + slot_ * row_bytes_;
  }
  const char* next() {  // the current position's row; then advance
    if (slot_ == 0) row_ = base_ + table_[block_] * block_bytes_;
    const char* r = row_;
    row_ += row_bytes_;
    if (++slot_ == block_len_) slot_ = 0, ++block_;
    return r;
  }

 private:
  const char* base_;
  const int32_t* table_;
  int64_t block_bytes_, row_bytes_;
  int block_len_, block_, slot_;
  const char* row_ = nullptr;
};

// Lane j = the sum of a[j]'s 16 lanes: a transpose-and-add tree (15 adds, 31 shuffles) in place
// of 16 horizontal reductions.
inline __m512 hsum16(const __m512 a[16]) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i)  // block k of b[i]: a[2i + k / 2], 8 partial sums in each half
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44), _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // block k of c[i]: a[4i + k], 4 partial sums
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88), _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)  // block k of d[i]: (a[8i + k], a[8i + 4 + k]) x 2 partial sums
    d[i] = _mm512_add_ps(_mm512_unpacklo_ps(c[2 * i], c[2 * i + 1]), _mm512_unpackhi_ps(c[2 * i], c[2 * i + 1]));
  // lane 4k + e holds a[4e + k]
  const __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x44), _mm512_shuffle_ps(d[0], d[1], 0xEE));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), e);
}

// One query row of one head over positions [lo, lo + len) (decode). NC = head_dim / 16 rounded
// up, with the q / output chunks held in registers (NC <= 8, head_dim <= 128). Scores 16 keys at
// a time into scores[0, len); P·V with two accumulator sets (even / odd keys) so the FMA chains overlap.
template <KVType KT, int NC>
void attend_row(const float* qi, int lo, int len, int kh, int head_dim, const PagedKV& kv, const AttnParams& ap,
                float* oi, float* scores) {
  const float scale = ap.scale;
  const size_t es = kv_elem_size(KT);
  const __mmask16 ml = tail_mask(head_dim - (NC - 1) * 16);
  __m512 q[NC];
  for (int c = 0; c < NC; ++c)
    q[c] = _mm512_mul_ps(_mm512_maskz_loadu_ps(c == NC - 1 ? ml : 0xffff, qi + c * 16), _mm512_set1_ps(scale));
  RowCursor kc(kv.k_base, kv, kh, head_dim, es, lo);
  for (int t = 0; t < len; t += 16) {
    const int kn = len - t < 16 ? len - t : 16;
    __m512 a[16];
    for (int j = 0; j < 16; ++j) {
      a[j] = _mm512_setzero_ps();
      if (j >= kn) continue;
      const char* row = kc.next();
      for (int c = 0; c < NC; ++c)
        a[j] = _mm512_fmadd_ps(q[c], kv_load<KT>(row, c * 16, c == NC - 1 ? ml : 0xffff, kv.k_scale, kv.k_zp), a[j]);
    }
    _mm512_mask_storeu_ps(scores + t, tail_mask(kn), hsum16(a));
  }
  if (ap.softcap > 0) softcap_inplace(scores, len, ap.softcap);
  const float inv = softmax_inplace(scores, len);
  __m512 o[2][NC];
  for (int c = 0; c < NC; ++c) o[0][c] = o[1][c] = _mm512_setzero_ps();
  RowCursor vc(kv.v_base, kv, kh, head_dim, es, lo);
  for (int t = 0; t < len; t += 2) {
    for (int u = 0; u < 2 && t + u < len; ++u) {
      const char* row = vc.next();
      const __m512 p = _mm512_set1_ps(scores[t + u]);
      for (int c = 0; c < NC; ++c)
        o[u][c] = _mm512_fmadd_ps(p, kv_load<KT>(row, c * 16, c == NC - 1 ? ml : 0xffff, kv.v_scale, kv.v_zp), o[u][c]);
    }
  }
  const __m512 vinv = _mm512_set1_ps(inv);
  for (int c = 0; c < NC; ++c)
    _mm512_mask_storeu_ps(oi + c * 16, c == NC - 1 ? ml : 0xffff, _mm512_mul_ps(_mm512_add_ps(o[0][c], o[1][c]), vinv));
}

// Any head_dim: chunks in a loop, output accumulated in place in oi.
template <KVType KT>
void attend_row_any(const float* qi, int lo, int len, int kh, int head_dim, const PagedKV& kv, const AttnParams& ap,
                    float* oi, float* scores) {
  const size_t es = kv_elem_size(KT);
  const float scale = ap.scale;
  for (int t = 0; t < len; ++t) {
    const char* row = (const char*)kv.k_base + kv_row_offset(kv, lo + t, kh, head_dim) * es;
    __m512 s = _mm512_setzero_ps();
    for (int d = 0; d < head_dim; d += 16) {
      const __mmask16 m = tail_mask(head_dim - d);
      s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qi + d), kv_load<KT>(row, d, m, kv.k_scale, kv.k_zp), s);
    }
    scores[t] = _mm512_reduce_add_ps(s) * scale;
  }
  if (ap.softcap > 0) softcap_inplace(scores, len, ap.softcap);
  const float inv = softmax_inplace(scores, len);
  for (int d = 0; d < head_dim; d += 16) _mm512_mask_storeu_ps(oi + d, tail_mask(head_dim - d), _mm512_setzero_ps());
  for (int t = 0; t < len; ++t) {
    const char* row = (const char*)kv.v_base + kv_row_offset(kv, lo + t, kh, head_dim) * es;
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

// Multi-query (prefill) path: a block of up to kQB query rows of one head against tiles of kKB
// keys, flash-style. Layouts are transposed so every FMA does 16 multiply-adds with no
// horizontal sums: qT[d][r] (query rows in lanes, pre-scaled), scores s[j][r] (one zmm per key
// of the tile, lanes = query rows), oT[d][r] (output rows in lanes). A K or V tile is converted
// to fp32 once (int8 dequantized) and reused by all kQB rows; the softmax is online (running
// max m[r] and sum l[r]), so the keys are read once per block. The tiles fit L1 for head_dim 128.
constexpr int kQB = 16, kKB = 16, kMaxBlockD = 256;
constexpr int kMinBlockRows = 4;  // below this a padded 16-row block costs more than rows alone

// Rows [0, kn) of a K or V tile as fp32 (the cursor's next kn positions), stride ld; rows
// [kn, kKB) zero (never NaN: their P is 0).
template <KVType KT>
inline void load_tile(RowCursor& cur, int kn, int head_dim, float scale, float zp, float* tile, int ld) {
  for (int j = 0; j < kKB; ++j) {
    float* dst = tile + (size_t)j * ld;
    if (j >= kn) {
      for (int d = 0; d < ld; d += 16) _mm512_store_ps(dst + d, _mm512_setzero_ps());
      continue;
    }
    const char* row = cur.next();
    for (int d = 0; d < ld; d += 16) _mm512_store_ps(dst + d, kv_load<KT>(row, d, tail_mask(head_dim - d), scale, zp));
  }
}

// Query rows [0, nr) (nr <= kQB) at positions pos0 .. pos0+nr-1 of head h (kv head kh).
template <KVType KT>
void attend_block(const float* q, int ldq, int nr, int pos0, int kh, int head_dim, const PagedKV& kv,
                  const AttnParams& ap, float* out, int ldo) {
  const float scale = ap.scale;
  alignas(64) float qT[kMaxBlockD][kQB];
  alignas(64) float oT[kMaxBlockD][kQB];
  alignas(64) float tile[kKB * kMaxBlockD];
  alignas(64) float pb[kKB][kQB];
  const int D = head_dim, ld = (D + 15) & ~15;
  for (int d = 0; d < D; ++d) {
    for (int r = 0; r < nr; ++r) qT[d][r] = q[(size_t)r * ldq + d] * scale;
    for (int r = nr; r < kQB; ++r) qT[d][r] = 0.f;
    _mm512_store_ps(oT[d], _mm512_setzero_ps());
  }
  __m512 m = _mm512_set1_ps(-INFINITY), l = _mm512_setzero_ps();
  const int end = pos0 + nr;  // keys [lo, end): the last row's causal limit, the first row's window
  const int lo = ap.window > 0 && pos0 + 1 > ap.window ? pos0 + 1 - ap.window : 0;
  const __m512 vcap = _mm512_set1_ps(ap.softcap), vicap = _mm512_set1_ps(ap.softcap > 0 ? 1.f / ap.softcap : 0.f);
  RowCursor kc(kv.k_base, kv, kh, D, kv_elem_size(KT), lo), vc(kv.v_base, kv, kh, D, kv_elem_size(KT), lo);
  for (int t0 = lo; t0 < end; t0 += kKB) {
    const int kn = end - t0 < kKB ? end - t0 : kKB;
    // S^T = K_tile · Q^T: s[j] lanes are the rows' scores for key t0 + j.
    load_tile<KT>(kc, kn, D, kv.k_scale, kv.k_zp, tile, ld);
    __m512 s[kKB];
    for (int j = 0; j < kKB; ++j) s[j] = _mm512_setzero_ps();
    for (int d = 0; d < D; ++d) {
      const __m512 qd = _mm512_load_ps(qT[d]);
      for (int j = 0; j < kKB; ++j) s[j] = _mm512_fmadd_ps(_mm512_set1_ps(tile[j * ld + d]), qd, s[j]);
    }
    if (ap.softcap > 0)
      for (int j = 0; j < kKB; ++j) s[j] = _mm512_mul_ps(vcap, tanh512(_mm512_mul_ps(s[j], vicap)));
    // Mask per key: row r sees key t iff pos0 + r >= t (causal) and, with a window,
    // t > pos0 + r - window. A row may see no key of a tile (a window narrower than the tile):
    // its m stays -inf and its alpha is taken as 0, not exp(-inf + inf).
    __mmask16 vis[kKB];
    __m512 mt = m;
    for (int j = 0; j < kKB; ++j) {
      const int shift = t0 + j - pos0;
      vis[j] = shift <= 0 ? (__mmask16)0xffff : shift >= 16 ? (__mmask16)0 : (__mmask16)(0xffffu << shift);
      if (ap.window > 0) {
        const int below = shift + ap.window;  // rows r < below are within the window
        vis[j] &= below >= 16 ? (__mmask16)0xffff : below <= 0 ? (__mmask16)0 : (__mmask16)((1u << below) - 1);
      }
      mt = _mm512_mask_max_ps(mt, vis[j], mt, s[j]);
    }
    const __mmask16 seen = _mm512_cmp_ps_mask(m, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
    const __m512 alpha = _mm512_maskz_mov_ps(seen, exp512(_mm512_sub_ps(m, mt)));
    m = mt;
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < kKB; ++j) {
      const __m512 p = _mm512_maskz_mov_ps(vis[j], exp512(_mm512_sub_ps(s[j], m)));  // m finite where vis
      sum = _mm512_add_ps(sum, p);
      _mm512_store_ps(pb[j], p);
    }
    l = _mm512_fmadd_ps(l, alpha, sum);
    // O^T = O^T * alpha + V_tile^T · P^T, eight output dims at a time (independent FMA chains).
    load_tile<KT>(vc, kn, D, kv.v_scale, kv.v_zp, tile, ld);
    __m512 p[kKB];
    for (int j = 0; j < kKB; ++j) p[j] = _mm512_load_ps(pb[j]);
    int d = 0;
    for (; d + 8 <= D; d += 8) {
      __m512 o[8];
      for (int u = 0; u < 8; ++u) o[u] = _mm512_mul_ps(_mm512_load_ps(oT[d + u]), alpha);
      for (int j = 0; j < kKB; ++j)
        for (int u = 0; u < 8; ++u) o[u] = _mm512_fmadd_ps(p[j], _mm512_set1_ps(tile[j * ld + d + u]), o[u]);
      for (int u = 0; u < 8; ++u) _mm512_store_ps(oT[d + u], o[u]);
    }
    for (; d < D; ++d) {
      __m512 o = _mm512_mul_ps(_mm512_load_ps(oT[d]), alpha);
      for (int j = 0; j < kKB; ++j) o = _mm512_fmadd_ps(p[j], _mm512_set1_ps(tile[j * ld + d]), o);
      _mm512_store_ps(oT[d], o);
    }
  }
  alignas(64) float inv[kQB];
  _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.f), l));
  for (int r = 0; r < nr; ++r) {
    float* orow = out + (size_t)r * ldo;
    for (int d = 0; d < D; ++d) orow[d] = oT[d][r] * inv[r];
  }
}

template <KVType KT>
void attention_t(const float* q, int ldq, int n, int start_pos, int heads, int kv_heads, int head_dim,
                 const PagedKV& kv, const AttnParams& ap, float* out, int ldo, int h_begin, int h_end,
                 float* scratch) {
  using RowFn = void (*)(const float*, int, int, int, int, const PagedKV&, const AttnParams&, float*, float*);
  static constexpr RowFn kRow[9] = {attend_row_any<KT>, attend_row<KT, 1>, attend_row<KT, 2>,
                                    attend_row<KT, 3>,  attend_row<KT, 4>, attend_row<KT, 5>,
                                    attend_row<KT, 6>,  attend_row<KT, 7>, attend_row<KT, 8>};
  const int nc = (head_dim + 15) / 16;
  const RowFn row_fn = nc <= 8 ? kRow[nc] : kRow[0];
  const int group = heads / kv_heads;
  for (int h = h_begin; h < h_end; ++h) {
    int i = 0;
    if (n >= kMinBlockRows && head_dim <= kMaxBlockD)  // prefill: blocks of query rows
      for (; i < n; i += kQB)
        attend_block<KT>(q + (size_t)i * ldq + h * head_dim, ldq, n - i < kQB ? n - i : kQB, start_pos + i, h / group,
                         head_dim, kv, ap, out + (size_t)i * ldo + h * head_dim, ldo);
    for (; i < n; ++i) {  // decode (n = 1) and short runs: one row at a time
      const int len = start_pos + i + 1, lo = ap.window > 0 && len > ap.window ? len - ap.window : 0;
      row_fn(q + (size_t)i * ldq + h * head_dim, lo, len - lo, h / group, head_dim, kv, ap,
             out + (size_t)i * ldo + h * head_dim, scratch);
    }
  }
}

}  // namespace

namespace avx512 {
void kv_store(const float* k, const float* v, int ld, int n, int start_pos, int kv_heads, int head_dim,
              const PagedKV& kv) {
  switch (kv.type) {
    case KVType::kF16: return kv_store_t<KVType::kF16>(k, v, ld, n, start_pos, kv_heads, head_dim, kv);
    case KVType::kF32: return kv_store_t<KVType::kF32>(k, v, ld, n, start_pos, kv_heads, head_dim, kv);
    case KVType::kI8: return kv_store_t<KVType::kI8>(k, v, ld, n, start_pos, kv_heads, head_dim, kv);
  }
}

void attention(const float* q, int ldq, int n, int start_pos, int heads, int kv_heads, int head_dim,
               const PagedKV& kv, const AttnParams& ap, float* out, int ldo, int h_begin, int h_end, float* scratch) {
  switch (kv.type) {
    case KVType::kF16:
      return attention_t<KVType::kF16>(q, ldq, n, start_pos, heads, kv_heads, head_dim, kv, ap, out, ldo, h_begin, h_end, scratch);
    case KVType::kF32:
      return attention_t<KVType::kF32>(q, ldq, n, start_pos, heads, kv_heads, head_dim, kv, ap, out, ldo, h_begin, h_end, scratch);
    case KVType::kI8:
      return attention_t<KVType::kI8>(q, ldq, n, start_pos, heads, kv_heads, head_dim, kv, ap, out, ldo, h_begin, h_end, scratch);
  }
}
}  // namespace avx512

}  // namespace turbolm::kernels
