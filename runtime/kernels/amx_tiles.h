// Private to the AMX kernels (qgemm_a8_amx.cc, kernels_amxbf16.cc): the one tile configuration
// they share, all eight tiles 16 rows x 64 bytes (each kernel writes down which it uses for what).
// It is loaded at the start of every kernel call: another library in the process (oneDNN under
// PyTorch) may configure or release the tiles on the same thread between two calls. Plain inline asm, no ISA intrinsics,
// internal linkage: safe to include from files compiled with different flags.
#pragma once
#include <cstdint>

namespace turbolm::kernels {
namespace {

constexpr int kTileRows = 16;  // rows of A and C per tile op

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "the LDTILECFG operand is 64 bytes");

inline void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = kTileRows;
  }
  // Not _tile_loadconfig: GCC 12's declares only 8 of the 64 bytes as read, so the stores of the
  // shapes may be dropped or sunk past it (the tiles then stay unconfigured: SIGILL on first use).
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
}

}  // namespace
}  // namespace turbolm::kernels
