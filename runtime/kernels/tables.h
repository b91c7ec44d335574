// Private: the SIMD tables, each defined in its ISA-flagged file (kernels_<isa>.cc). Only
// dispatch.cc calls them, and only after checking the CPU supports the ISA.
#pragma once
#include "kernels.h"

namespace turbolm::kernels {
const KernelTable* amx_bf16_kernels();
const KernelTable* avx512_bf16_kernels();
const KernelTable* avx512_kernels();
const KernelTable* avx2_kernels();
}  // namespace turbolm::kernels
