// pack_matrix: W[K, N] (any strided view) -> column panels of kPanel; pack_bf16_pairs: those
// panels -> the bf16 k-pair panels of act_type bf16 (see kernels.h).
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

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

void pack_bf16_pairs(const PackedMatrix& src, uint16_t* out) {
  const int K = src.K;
  for (int p = 0; p < src.n_panels; ++p) {
    const uint16_t* in = src.data + (size_t)p * K * kPanel;
    uint16_t* dst = out + (size_t)p * K * kPanel;
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < kPanel; ++j) {
        const uint16_t v = in[(size_t)k * kPanel + j];
        const float f = src.dtype == WDType::kF16 ? f16_to_f32(v) : bf16_to_f32(v);
        dst[((size_t)(k / 2) * kPanel + j) * 2 + (k % 2)] = src.dtype == WDType::kBF16 ? v : f32_to_bf16(f);
      }
  }
}

}  // namespace turbolm::kernels
