// fp16 <-> fp32 scalar conversions, bit-exact (IEEE 754 binary16, round-to-nearest-even,
// subnormals, inf and nan preserved). Used by loaders and the reference kernels.
#include <cstring>

#include "kernels.h"

namespace turbolm::kernels {

float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {  // inf / nan (keep the payload, quiet bit included)
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {  // normal
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {  // +-0
    bits = sign;
  } else {  // subnormal: value = man * 2^-24; normalise
    int e = -1;
    do { man <<= 1; ++e; } while ((man & 0x400) == 0);
    bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or nan
    if (ax == 0x7f800000u) return sign | 0x7c00;
    return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff);  // quiet nan, keep top payload bits
  }
  if (ax >= 0x477ff000u) return sign | 0x7c00;  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {  // below the smallest normal (2^-14): subnormal or zero
    if (ax < 0x33000000u) return sign;  // < 2^-25 rounds to 0 (2^-25 exactly ties to even 0)
    uint32_t man = (ax & 0x7fffff) | 0x800000;
    int shift = 126 - (int)(ax >> 23);  // 14..24 for exponents 2^-15 .. 2^-25
    uint32_t q = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return sign | (uint16_t)q;  // q may carry into the exponent: that is the correct result
  }
  // normal: rebias the exponent, round the 13 dropped bits to nearest even
  uint32_t r = ax - 0x38000000u;  // exponent 127 -> 15 bias
  uint32_t q = r >> 13;
  uint32_t rem = r & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) ++q;  // carry into exponent is correct
  return sign | (uint16_t)q;
}

}  // namespace turbolm::kernels
