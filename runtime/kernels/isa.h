// CPU feature tests and the "most capable first" registry shared by every kernel dispatcher
// (dispatch.cc for the fp kernels, qdispatch.cc for the quantized ones): a table is chosen once,
// from what this CPU supports, never per call.
#pragma once
#include <cstddef>
#include <vector>

namespace turbolm::kernels {

inline bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
}
// vpdpbusd (VNNI) on the AVX-512 registers, plus VBMI's byte permutes that transpose packed
// weights into VNNI order (Ice Lake and later, Zen 4).
inline bool cpu_has_avx512_vnni() {
  return cpu_has_avx512() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
}
// vdpbf16ps / vcvtneps2bf16 on the AVX-512 registers (Cooper Lake, Sapphire Rapids, Zen 4).
inline bool cpu_has_avx512_bf16() { return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16"); }
// AMX tiles (Sapphire Rapids and later), with the kernel's permission to use the tile state
// (Linux: arch_prctl ARCH_REQ_XCOMP_PERM, once per process; isa.cc).
bool amx_tiles_permitted();
bool cpu_has_amx_int8();  // + AVX-512 VNNI/VBMI (the int8 AMX kernel's other rows)
bool cpu_has_amx_bf16();  // + AVX512-BF16
inline bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

template <typename Table>
struct IsaVariant {
  const Table* (*table)();
  bool (*supported)();
};

// The reference table first, then every variant this CPU runs (for the all-variants tests).
template <typename Table, size_t N>
std::vector<const Table*> supported_tables(const Table& reference, const IsaVariant<Table> (&variants)[N]) {
  std::vector<const Table*> out{&reference};
  for (const auto& v : variants)
    if (v.supported()) out.push_back(v.table());
  return out;
}

// The first (most capable) supported variant, else the reference.
template <typename Table, size_t N>
const Table* best_table(const Table& reference, const IsaVariant<Table> (&variants)[N]) {
  for (const auto& v : variants)
    if (v.supported()) return v.table();
  return &reference;
}

}  // namespace turbolm::kernels
