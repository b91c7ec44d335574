// The scalar reference table: the plainest correct code for every kernel. SIMD tables are
// tested against it (tests/runtime/test_kernels_all.cc); fp32 accumulation throughout.
#include <cmath>

#include "kernels.h"

namespace turbolm::kernels {
namespace {

inline float wload(const uint16_t* p, WDType t) { return t == WDType::kF16 ? f16_to_f32(*p) : bf16_to_f32(*p); }

void gemm_ref(const float* x, int ldx, const PackedMatrix& w, float* y, int ldy, int M, int p_begin,
              int p_end, bool accumulate) {
  for (int p = p_begin; p < p_end; ++p) {
    const uint16_t* panel = w.data + (size_t)p * w.K * kPanel;
    for (int j = 0; j < kPanel && p * kPanel + j < w.N; ++j) {
      const int n = p * kPanel + j;
      for (int m = 0; m < M; ++m) {
        float acc = 0.f;
        for (int k = 0; k < w.K; ++k) acc += x[(size_t)m * ldx + k] * wload(panel + (size_t)k * kPanel + j, w.dtype);
        float* out = y + (size_t)m * ldy + n;
        *out = accumulate ? *out + acc : acc;
      }
    }
  }
}

void gemm_bf16_ref(const float* x, int ldx, const PackedBF16& w, float* y, int ldy, int M, int p_begin, int p_end,
                   bool accumulate) {
  for (int p = p_begin; p < p_end; ++p) {
    const uint16_t* panel = w.data + (size_t)p * w.K * kPanel;
    for (int j = 0; j < kPanel && p * kPanel + j < w.N; ++j) {
      const int n = p * kPanel + j;
      for (int m = 0; m < M; ++m) {
        float* out = y + (size_t)m * ldy + n;
        float acc = accumulate ? *out : 0.f;
        for (int kp = 0; kp < w.K / 2; ++kp) {
          const uint16_t* pair = panel + ((size_t)kp * kPanel + j) * 2;
          const float x0 = bf16_to_f32(f32_to_bf16(x[(size_t)m * ldx + 2 * kp]));
          const float x1 = bf16_to_f32(f32_to_bf16(x[(size_t)m * ldx + 2 * kp + 1]));
          acc = std::fma(x0, bf16_to_f32(pair[0]), std::fma(x1, bf16_to_f32(pair[1]), acc));
        }
        *out = acc;
      }
    }
  }
}

// Element i of K or V (head h, position t) as fp32.
inline float kv_read(const PagedKV& kv, bool is_v, int t, int h, int head_dim, int i) {
  const int64_t off = (int64_t)kv.block_table[t / kv.block_len] * kv.block_stride + h * kv.head_stride +
                      (int64_t)(t % kv.block_len) * head_dim + i;
  const void* base = is_v ? kv.v_base : kv.k_base;
  switch (kv.type) {
    case KVType::kF16: return f16_to_f32(static_cast<const uint16_t*>(base)[off]);
    case KVType::kF32: return static_cast<const float*>(base)[off];
    case KVType::kI8: {
      const float q = static_cast<const int8_t*>(base)[off];
      return is_v ? q * kv.v_scale + kv.v_zp : q * kv.k_scale + kv.k_zp;
    }
  }
  return 0.f;
}

inline void kv_write(const PagedKV& kv, bool is_v, int t, int h, int head_dim, int i, float f) {
  const int64_t off = (int64_t)kv.block_table[t / kv.block_len] * kv.block_stride + h * kv.head_stride +
                      (int64_t)(t % kv.block_len) * head_dim + i;
  void* base = is_v ? kv.v_base : kv.k_base;
  switch (kv.type) {
    case KVType::kF16: static_cast<uint16_t*>(base)[off] = f32_to_f16(f); break;
    case KVType::kF32: static_cast<float*>(base)[off] = f; break;
    case KVType::kI8: {
      const float scale = is_v ? kv.v_scale : kv.k_scale, zp = is_v ? kv.v_zp : kv.k_zp;
      float q = std::nearbyint((f - zp) / scale);  // round half to even, like numpy
      q = q < -128.f ? -128.f : (q > 127.f ? 127.f : q);
      static_cast<int8_t*>(base)[off] = (int8_t)q;
      break;
    }
  }
}

void kv_store_ref(const float* k, const float* v, int ld, int n, int start_pos, int kv_heads, int head_dim,
                  const PagedKV& kv) {
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < kv_heads; ++h)
      for (int d = 0; d < head_dim; ++d) {
        kv_write(kv, false, start_pos + i, h, head_dim, d, k[(size_t)i * ld + h * head_dim + d]);
        kv_write(kv, true, start_pos + i, h, head_dim, d, v[(size_t)i * ld + h * head_dim + d]);
      }
}

void attention_ref(const float* q, int ldq, int n, int start_pos, int heads, int kv_heads, int head_dim,
                   const PagedKV& kv, const AttnParams& ap, float* out, int ldo, int h_begin, int h_end,
                   float* scratch) {
  const int group = heads / kv_heads;
  for (int h = h_begin; h < h_end; ++h) {
    const int kh = h / group;
    for (int i = 0; i < n; ++i) {
      const float* qi = q + (size_t)i * ldq + h * head_dim;
      float* oi = out + (size_t)i * ldo + h * head_dim;
      const int len = start_pos + i + 1;  // causal: positions [lo, start_pos + i]
      const int lo = ap.window > 0 && len > ap.window ? len - ap.window : 0;
      float mx = -INFINITY;
      for (int t = lo; t < len; ++t) {
        float s = 0.f;
        for (int d = 0; d < head_dim; ++d) s += qi[d] * kv_read(kv, false, t, kh, head_dim, d);
        s *= ap.scale;
        if (ap.softcap > 0) s = ap.softcap * std::tanh(s / ap.softcap);
        scratch[t] = s;
        mx = scratch[t] > mx ? scratch[t] : mx;
      }
      float sum = 0.f;
      for (int t = lo; t < len; ++t) {
        scratch[t] = std::exp(scratch[t] - mx);
        sum += scratch[t];
      }
      const float inv = 1.f / sum;
      for (int d = 0; d < head_dim; ++d) oi[d] = 0.f;
      for (int t = lo; t < len; ++t) {
        const float p = scratch[t] * inv;
        for (int d = 0; d < head_dim; ++d) oi[d] += p * kv_read(kv, true, t, kh, head_dim, d);
      }
    }
  }
}

void rmsnorm_ref(const float* x, int ldx, const float* w, float eps, int M, int d, float* y, int ldy) {
  for (int m = 0; m < M; ++m) {
    const float* xr = x + (size_t)m * ldx;
    float* yr = y + (size_t)m * ldy;
    float ss = 0.f;
    for (int i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.f / std::sqrt(ss / d + eps);
    for (int i = 0; i < d; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

void rope_ref(float* x, int ldx, int T, int heads, int head_dim, int rot_dim, const int32_t* pos,
              const float* inv_freq) {
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < rot_dim / 2; ++i) {
      const float a = (float)pos[t] * inv_freq[i];
      const float c = std::cos(a), s = std::sin(a);
      for (int h = 0; h < heads; ++h) {
        float* p = x + (size_t)t * ldx + h * head_dim + 2 * i;
        const float x0 = p[0], x1 = p[1];
        p[0] = x0 * c - x1 * s;
        p[1] = x0 * s + x1 * c;
      }
    }
}

void silu_mul_ref(const float* gate, const float* up, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

void gelu_mul_ref(const float* gate, const float* up, float* out, int n) {
  for (int i = 0; i < n; ++i) {
    const float x = gate[i];
    out[i] = 0.5f * x * (1.f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x))) * up[i];
  }
}

void to_f32_ref(const uint16_t* src, WDType dtype, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = wload(src + i, dtype);
}

float row_max_ref(const float* x, int n) {
  float m = x[0];
  for (int i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

float exp_sum_ref(const float* x, int n, float shift, float* out) {
  double sum = 0;  // the reference sums in double; SIMD tables in fp32 lanes
  for (int i = 0; i < n; ++i) sum += (out[i] = std::exp(x[i] - shift));
  return (float)sum;
}

void softcap_ref(float* x, int n, float cap) {
  for (int i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

}  // namespace

const KernelTable& reference_kernels() {
  static const KernelTable t{"ref", gemm_ref, kv_store_ref, attention_ref, rmsnorm_ref,
                             rope_ref, silu_mul_ref, gelu_mul_ref, to_f32_ref, row_max_ref, exp_sum_ref, gemm_bf16_ref,
                             false, softcap_ref};
  return t;
}

}  // namespace turbolm::kernels
