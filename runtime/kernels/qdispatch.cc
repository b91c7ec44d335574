// Picks the quantized kernel table once from the CPU's features (registry: most capable first).
// AVX-512 VNNI is not needed: activations stay fp32.
#include "isa.h"
#include "qgemm.h"

namespace turbolm::kernels {
namespace {

const IsaVariant<QKernelTable> kQVariants[] = {
    {avx512_qkernels, cpu_has_avx512},
    {avx2_qkernels, cpu_has_avx2},
};

}  // namespace

std::vector<const QKernelTable*> supported_qkernels() {
  return supported_tables(reference_qkernels(), kQVariants);
}

const QKernelTable& best_qkernels() {
  static const QKernelTable* best = best_table(reference_qkernels(), kQVariants);
  return *best;
}

}  // namespace turbolm::kernels
