// A random quantized weight for the qgemm tests: unpacked (q [K, N], scales / zeros [K/G, N]),
// packed into the runtime layout (kernels/qgemm.h), and its fp64 dequantized value as the oracle.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "kernels/qgemm.h"
#include "test_rng.h"

template <typename T>
struct Aligned {
  std::unique_ptr<T, decltype(&std::free)> p{nullptr, &std::free};
  explicit Aligned(size_t n) : p(static_cast<T*>(std::aligned_alloc(64, ((n * sizeof(T)) + 63) / 64 * 64 + 64)), &std::free) {}
  T* get() const { return p.get(); }
};

// A random quantized weight, unpacked (q [K, N], scales / zeros [K/G, N]) and packed.
struct QWeight {
  int bits, K, N, G;
  std::vector<uint8_t> q;
  std::vector<float> s, z;
  Aligned<uint8_t> qp;
  Aligned<float> szp;
  turbolm::kernels::QPackedMatrix pm;
  QWeight(int bits_, int K_, int N_, int G_, uint64_t seed)
      : bits(bits_), K(K_), N(N_), G(G_), q((size_t)K_ * N_), s((size_t)(K_ / G_) * N_), z(s.size()),
        qp(turbolm::kernels::qpacked_q_bytes(bits_, K_, N_)), szp(turbolm::kernels::qpacked_sz_floats(K_, N_, G_)) {
    Rng r(seed);
    const int qmax = (1 << bits) - 1;
    for (auto& v : q) v = (uint8_t)(r.next() % (qmax + 1));
    for (size_t i = 0; i < s.size(); ++i) {
      s[i] = turbolm::kernels::f16_to_f32(turbolm::kernels::f32_to_f16(r.uniform(0.002f, 0.05f)));  // fp16 scales, as on disk
      z[i] = (i % 3 == 0) ? r.uniform(0.f, (float)qmax) : (float)(r.next() % (qmax + 1));  // some non-integer
    }
    turbolm::kernels::qpack_matrix(bits, K, N, G, q.data(), N, s.data(), z.data(), N, qp.get(), szp.get());
    pm = turbolm::kernels::QPackedMatrix{bits, K, N, turbolm::kernels::qpanels(N), G, qp.get(), szp.get()};
  }
  double w(int k, int n) const {
    const size_t gi = (size_t)(k / G) * N + n;
    return ((double)q[(size_t)k * N + n] - z[gi]) * s[gi];
  }
};

