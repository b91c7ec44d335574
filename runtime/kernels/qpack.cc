// qpack_matrix: unpacked integer weights + per-group scales / zeros -> the QPackedMatrix runtime
// layout written down in qgemm.h; and the inverse accessors used by tests.
#include <cstring>

#include "core/error.h"
#include "qgemm.h"

namespace turbolm::kernels {

void qpack_matrix(int bits, int K, int N, int G, const uint8_t* q, int64_t ldq, const float* scales,
                  const float* zeros, int64_t lds, uint8_t* q_out, float* sz_out) {
  TURBOLM_CHECK(bits == 4 || bits == 8, "quantized weights must be 4 or 8 bits, not ", bits);
  TURBOLM_CHECK(G > 0 && G % kQGroupAlign == 0, "group_size ", G, " must be a positive multiple of ", kQGroupAlign);
  TURBOLM_CHECK(K % G == 0, "group_size ", G, " does not divide the input size ", K);
  const int n_panels = qpanels(N), n_groups = K / G, rb = kQRowBytes(bits);
  const int qmax = (1 << bits) - 1;
  for (int p = 0; p < n_panels; ++p) {
    const int n0 = p * kPanel, cols = N - n0 < kPanel ? N - n0 : kPanel;
    uint8_t* panel = q_out + (size_t)p * K * rb;
    std::memset(panel, 0, (size_t)K * rb);
    for (int k = 0; k < K; ++k) {
      const uint8_t* src = q + (int64_t)k * ldq + n0;
      uint8_t* row = panel + (size_t)k * rb;
      for (int j = 0; j < cols; ++j) {
        const int v = src[j];
        TURBOLM_CHECK(v <= qmax, "quantized weight ", v, " at (", k, ", ", n0 + j, ") does not fit in ", bits, " bits");
        if (bits == 8) row[j] = (uint8_t)v;
        else if (j < 16) row[j] |= (uint8_t)v;
        else row[j - 16] |= (uint8_t)(v << 4);
      }
    }
    float* sz = sz_out + (size_t)p * n_groups * kQGroupFloats;
    std::memset(sz, 0, sizeof(float) * (size_t)n_groups * kQGroupFloats);
    for (int g = 0; g < n_groups; ++g)
      for (int j = 0; j < cols; ++j) {
        const float s = scales[(int64_t)g * lds + n0 + j], z = zeros[(int64_t)g * lds + n0 + j];
        sz[(size_t)g * kQGroupFloats + j] = s;
        sz[(size_t)g * kQGroupFloats + kPanel + j] = z * s;
      }
  }
}

int qpacked_q(const QPackedMatrix& w, int k, int n) {
  const int p = n / kPanel, j = n % kPanel, rb = kQRowBytes(w.bits);
  const uint8_t* row = w.q + ((size_t)p * w.K + k) * rb;
  if (w.bits == 8) return row[j];
  return j < 16 ? row[j] & 0xf : row[j - 16] >> 4;
}

float qpacked_dequant(const QPackedMatrix& w, int k, int n) {
  const int p = n / kPanel, j = n % kPanel, g = k / w.group_size;
  const float* sz = w.sz + ((size_t)p * (w.K / w.group_size) + g) * kQGroupFloats;
  return (float)qpacked_q(w, k, n) * sz[j] - sz[kPanel + j];
}

}  // namespace turbolm::kernels
