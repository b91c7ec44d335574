// pack_matrix: W[K, N] (any strided view) -> column panels of kPanel (see kernels.h).
#include <cstring>

#include "kernels.h"

namespace turbolm::kernels {

void pack_matrix(const uint16_t* src, int K, int N, int64_t stride_k, int64_t stride_n, uint16_t* out) {
  const int n_panels = (N + kPanel - 1) / kPanel;
  for (int p = 0; p < n_panels; ++p) {
    uint16_t* panel = out + (size_t)p * K * kPanel;
    const int n0 = p * kPanel;
    const int cols = N - n0 < kPanel ? N - n0 : kPanel;
    if (cols < kPanel) std::memset(panel, 0, sizeof(uint16_t) * (size_t)K * kPanel);
    if (stride_n <= stride_k) {  // rows contiguous-ish: walk k outer, j inner
      for (int k = 0; k < K; ++k) {
        const uint16_t* s = src + (int64_t)k * stride_k + (int64_t)n0 * stride_n;
        uint16_t* d = panel + (size_t)k * kPanel;
        if (stride_n == 1) std::memcpy(d, s, sizeof(uint16_t) * cols);
        else for (int j = 0; j < cols; ++j) d[j] = s[(int64_t)j * stride_n];
      }
    } else {  // transposed view (e.g. output.weight [vocab, hidden]): walk each column along k
      for (int j = 0; j < cols; ++j) {
        const uint16_t* s = src + (int64_t)(n0 + j) * stride_n;
        uint16_t* d = panel + j;
        for (int k = 0; k < K; ++k) d[(size_t)k * kPanel] = s[(int64_t)k * stride_k];
      }
    }
  }
}

}  // namespace turbolm::kernels
