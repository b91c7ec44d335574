// Picks the quantized kernel table once from the CPU's features (registry: most capable first).
// avx512_vnni differs from avx512 only in the int8-activation product (qgemm_a8); the others
// emulate that product in fp32.
#include "isa.h"
#include "qgemm.h"

namespace turbolm::kernels {

namespace {

const IsaVariant<QKernelTable> kQVariants[] = {
    {amx_qkernels, cpu_has_amx_int8},
    {avx512_vnni_qkernels, cpu_has_avx512_vnni},
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
