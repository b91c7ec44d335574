// Deterministic test data for the kernel tests (same numbers on every platform).
#pragma once
#include <cstdint>

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() { s = s * 6364136223846793005ull + 1442695040888963407ull; return (uint32_t)(s >> 33); }
  float uniform(float lo = -1.f, float hi = 1.f) { return lo + (hi - lo) * (next() & 0xffffff) / float(0x1000000); }
};
