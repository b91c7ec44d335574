// The CPU features that need more than a CPUID bit: AMX tiles are usable only after the kernel
// grants this process the tile state (Linux: arch_prctl ARCH_REQ_XCOMP_PERM), asked for once.
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "isa.h"

namespace turbolm::kernels {

bool amx_tiles_permitted() {
  static const bool ok = [] {
    if (!__builtin_cpu_supports("amx-tile")) return false;
#if defined(__linux__)
    constexpr long kReqXcompPerm = 0x1023, kXFeatureTileData = 18;  // asm/prctl.h, the XTILEDATA state
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXFeatureTileData) == 0;
#else
    return false;
#endif
  }();
  return ok;
}

bool cpu_has_amx_int8() {
  return cpu_has_avx512_vnni() && __builtin_cpu_supports("amx-int8") && amx_tiles_permitted();
}

bool cpu_has_amx_bf16() {
  return cpu_has_avx512_bf16() && __builtin_cpu_supports("amx-bf16") && amx_tiles_permitted();
}

}  // namespace turbolm::kernels
