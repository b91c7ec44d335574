// Picks the quantized kernel table once from the CPU's features (registry: most capable first).
// avx512_vnni differs from avx512 only in the int8-activation product (qgemm_a8); the others
// emulate that product in fp32.
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "isa.h"
#include "qgemm.h"

namespace turbolm::kernels {

bool cpu_has_amx_int8() {
  static const bool ok = [] {
    if (!cpu_has_avx512_vnni() || !__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-int8"))
      return false;
#if defined(__linux__)
    constexpr long kReqXcompPerm = 0x1023, kXFeatureTileData = 18;  // asm/prctl.h, the XTILEDATA state
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXFeatureTileData) == 0;
#else
    return false;
#endif
  }();
  return ok;
}

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
