// Private to the kernels folder: per-thread scratch and the row passes that bound it.
//
// Scratch is plain malloc, not std::vector: it is used from files compiled with ISA flags, where an
// inline library template instantiated there could be the copy the linker keeps for every other
// file too. Internal linkage (anonymous namespace), so each ISA file keeps its own copy.
#pragma once
#include <cstddef>
#include <cstdlib>

namespace turbolm::kernels {
namespace {

// A 64-byte aligned buffer that grows on demand (never shrinks); declare it thread_local.
struct Scratch {
  void* p = nullptr;
  size_t n = 0;
  template <typename T>
  T* get(size_t count) {  // nullptr when the allocation fails
    const size_t need = count * sizeof(T);
    if (n < need) {
      std::free(p);
      p = std::aligned_alloc(64, (need + 63) / 64 * 64);
      n = p ? need : 0;
    }
    return static_cast<T*>(p);
  }
  ~Scratch() { std::free(p); }
};

// Rows [0, M) in passes of at most kRowPass: kernels whose per-thread copies grow with M (x in
// bf16, the half-zeroed int8 A of the AMX kernel) run them pass by pass. Rows are independent in
// every product here, so the passes change no bit. fn(first_row, rows).
constexpr int kRowPass = 256;
template <typename F>
inline void for_row_passes(int M, const F& fn) {
  for (int r = 0; r < M; r += kRowPass) fn(r, M - r < kRowPass ? M - r : kRowPass);
}

}  // namespace
}  // namespace turbolm::kernels
