// Picks the kernel table once from the CPU's features (registry: most capable first).
#include "kernels.h"
#include "tables.h"

namespace turbolm::kernels {
namespace {

struct Variant {
  const KernelTable* (*table)();  // nullptr when the variant was not compiled in
  bool (*supported)();
};

bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
}
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

// Most capable first.
const Variant kVariants[] = {
    {avx512_kernels, has_avx512},
    {avx2_kernels, has_avx2},
};

}  // namespace

std::vector<const KernelTable*> supported_kernels() {
  std::vector<const KernelTable*> out{&reference_kernels()};
  for (const Variant& v : kVariants)
    if (v.supported()) out.push_back(v.table());
  return out;
}

const KernelTable& best_kernels() {
  static const KernelTable* best = [] {
    for (const Variant& v : kVariants)
      if (v.supported()) return v.table();
    return &reference_kernels();
  }();
  return *best;
}

}  // namespace turbolm::kernels
