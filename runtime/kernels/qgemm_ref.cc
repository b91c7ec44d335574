// The scalar reference twin of the quantized GEMM: the plainest correct code, one dot product per
// output, y = sum_k x * (q * s - zs) in fp32 (see qgemm.h for the layout).
#include "qgemm.h"

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

const QKernelTable kRef{"ref", qgemm_ref};

}  // namespace

const QKernelTable& reference_qkernels() { return kRef; }

}  // namespace turbolm::kernels
