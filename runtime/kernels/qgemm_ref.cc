// The scalar reference twin of the quantized GEMM: the plainest correct code, one dot product per
// output, y = sum_k x * (q * s - zs) in fp32 (see qgemm.h for the layout); and of the int8-
// activation path (quantize_acts, qgemm_a8), whose arithmetic qgemm.h fixes to the last rounding.
#include <cmath>
#include <vector>

#include "qgemm.h"
#include "scratch.h"

namespace turbolm::kernels {
namespace {

void qgemm_ref(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
               bool accumulate) {
  for (int p = p_begin; p < p_end; ++p)
    for (int j = 0; j < kPanel && p * kPanel + j < w.N; ++j) {
      const int n = p * kPanel + j;
      for (int m = 0; m < M; ++m) {
        float acc = 0.f;
        for (int k = 0; k < w.K; ++k) acc += x[(size_t)m * ldx + k] * qpacked_dequant(w, k, n);
        float* out = y + (size_t)m * ldy + n;
        *out = accumulate ? *out + acc : acc;
      }
    }
}

void quantize_acts_ref(const float* x, int ldx, int M, int K, int G, int8_t* xq, int ldq, float* a, float* xsum,
                       int ldg) {  // G: the block (act_block of the weight's group size)
  for (int m = 0; m < M; ++m)
    for (int g = 0; g < K / G; ++g) {
      const float* xg = x + (size_t)m * ldx + (size_t)g * G;
      float amax = 0.f;
      for (int k = 0; k < G; ++k) amax = std::fmax(amax, std::fabs(xg[k]));
      const float inv = amax > kActTinyAmax ? 127.f / amax : 0.f;  // 127 / amax would overflow below it
      int32_t isum = 0;
      for (int k = 0; k < G; ++k) {
        const float v = std::nearbyint(xg[k] * inv);
        const int8_t q = (int8_t)(v > 127.f ? 127.f : v < -127.f ? -127.f : v);
        xq[(size_t)m * ldq + (size_t)g * G + k] = q;
        isum += q;
      }
      a[(size_t)m * ldg + g] = amax / 127.f;
      xsum[(size_t)m * ldg + g] = amax / 127.f * (float)isum;
    }
}

void qgemm_a8_ref(const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                  bool accumulate) {
  const int G = w.group_size, n_groups = w.K / G, B = x.B;
  for (int p = p_begin; p < p_end; ++p)
    for (int j = 0; j < kPanel && p * kPanel + j < w.N; ++j) {
      const int n = p * kPanel + j;
      for (int m = 0; m < M; ++m) {
        float* out = y + (size_t)m * ldy + n;
        float acc = accumulate ? *out : 0.f;
        for (int b = 0; b < w.K / B; ++b) {
          int32_t c = 0;
          for (int k = b * B; k < (b + 1) * B; ++k) c += qpacked_q(w, k, n) * (int32_t)x.q[(size_t)m * x.ldq + k];
          const float* sz = w.sz + ((size_t)p * n_groups + b * B / G) * kQGroupFloats;
          acc = std::fma((float)c, sz[j] * x.scale[(size_t)m * x.ldg + b], acc);
          acc = std::fma(-sz[kPanel + j], x.sum[(size_t)m * x.ldg + b], acc);
        }
        *out = acc;
      }
    }
}

const QKernelTable kRef{"ref", qgemm_ref, quantize_acts_ref, qgemm_a8_ref, true};

}  // namespace

const QKernelTable& reference_qkernels() { return kRef; }

void qgemm_a8_via_fp32(QGemmFn fp, const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin,
                       int p_end, bool accumulate) {
  thread_local std::vector<float> xf;  // [rows][K] the dequantized activations of this thread's pass
  for_row_passes(M, [&](int r, int rows) {
    xf.resize((size_t)rows * x.K);
    for (int m = 0; m < rows; ++m)
      for (int k = 0; k < x.K; ++k)
        xf[(size_t)m * x.K + k] = (float)x.q[(size_t)(r + m) * x.ldq + k] * x.scale[(size_t)(r + m) * x.ldg + k / x.B];
    fp(xf.data(), x.K, w, y + (size_t)r * ldy, ldy, rows, p_begin, p_end, accumulate);
  });
}

}  // namespace turbolm::kernels
