// Picks the kernel table once from the CPU's features (registry: most capable first).
#include "isa.h"
#include "kernels.h"
#include "tables.h"

namespace turbolm::kernels {
namespace {

const IsaVariant<KernelTable> kVariants[] = {
    {amx_bf16_kernels, cpu_has_amx_bf16},
    {avx512_bf16_kernels, cpu_has_avx512_bf16},
    {avx512_kernels, cpu_has_avx512},
    {avx2_kernels, cpu_has_avx2},
};

}  // namespace

std::vector<const KernelTable*> supported_kernels() { return supported_tables(reference_kernels(), kVariants); }

const KernelTable& best_kernels() {
  static const KernelTable* best = best_table(reference_kernels(), kVariants);
  return *best;
}

}  // namespace turbolm::kernels
