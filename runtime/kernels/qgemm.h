// Weight-only quantized GEMM (W4A16 / W8A16): int4 or int8 weights with per-group fp32 scales and
// zero points, fp32 activations and accumulation. Same conventions as kernels.h (pure functions,
// raw pointers, explicit shapes, [p_begin, p_end) panel ranges for the ThreadPool); every variant
// has the scalar reference twin (qgemm_ref.cc), and tests/runtime/test_kernels_qgemm.cc runs every
// QKernelTable the CPU supports against it and against a dequantize-then-fp32-GEMM oracle.
//
// ---- the runtime layout (QPackedMatrix), written down once -------------------------------------
// A quantized linear W[K, N] (K = in, N = out), group size G along K, stores per element an
// unsigned integer q[k, n] in [0, 2^bits) and per (group g = k / G, column n) a scale s[g, n] and
// a zero point z[g, n] (in q units, need not be an integer):
//     W[k, n] = (q[k, n] - z[g, n]) * s[g, n]  =  q[k, n] * s[g, n] - zs[g, n],   zs = z * s
// It is repacked at load time (qpack.cc) into 32-column panels like the fp16 PackedMatrix:
//   q:  [n_panels][K][kQRowBytes(bits)] bytes; one k-row of one panel is
//       int4: 16 bytes; byte j (j < 16) holds column j in its low nibble and column j + 16 in its
//             high nibble (so one zero-extend of 16 bytes to 16 int32 lanes gives columns 0..15
//             after `& 0xf` and columns 16..31 after `>> 4`);
//       int8: 32 bytes; byte j holds column j (unsigned, zero point as above).
//   sz: [n_panels][K / G][2][kPanel] fp32: for each (panel, group) the 32 scales s then the 32
//       values zs = z * s of the panel's columns.
// Columns past N are q = 0, s = 0, zs = 0 (they compute 0 and are never written to y).
// Constraints: G % kQGroupAlign == 0 and K % G == 0 (the group never straddles a k-row block,
// and a TP row slice of K must itself be a multiple of G).
//
// Kernels may use either form of the math: sum_k x*(q*s - zs) (dequantize in registers), or per
// group acc += s * sum_k(x*q) - zs * sum_k(x) (the convert+FMA inner loop for small M).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels.h"

namespace turbolm::kernels {

constexpr int kQGroupAlign = 16;  // group sizes must be multiples of this (16, 32, 64, 128, ...)
constexpr int kQRowBytes(int bits) { return kPanel * bits / 8; }
static_assert(kPanel == 32, "the int4 nibble layout pairs column j with column j + 16");
static_assert(kQRowBytes(4) == 16 && kQRowBytes(8) == 32, "one panel k-row: 16 B (int4), 32 B (int8)");
constexpr int kQGroupFloats = 2 * kPanel;  // s[32] then zs[32] per (panel, group)
static_assert(kQGroupFloats * sizeof(float) == 256, "per (panel, group) scale block is 256 bytes");

struct QPackedMatrix {
  int bits = 4;  // 4 or 8
  int K = 0, N = 0, n_panels = 0, group_size = 0;
  const uint8_t* q = nullptr;  // [n_panels][K][kQRowBytes(bits)], 64-byte aligned, owned by the caller
  const float* sz = nullptr;   // [n_panels][K / group_size][2][kPanel], 64-byte aligned
};

inline int qpanels(int N) { return (N + kPanel - 1) / kPanel; }
inline size_t qpacked_q_bytes(int bits, int K, int N) { return (size_t)qpanels(N) * K * kQRowBytes(bits); }
inline size_t qpacked_sz_floats(int K, int N, int G) { return (size_t)qpanels(N) * (K / G) * kQGroupFloats; }

// Packs unpacked integer weights into the runtime layout. q(k, n) = q[k * ldq + n] (one value per
// byte, < 2^bits); s(g, n) = scales[g * lds + n], z(g, n) = zeros[g * lds + n] (fp32, q units).
// Throws turbolm::Error when bits is not 4 / 8, G is not a multiple of kQGroupAlign, K % G != 0,
// or a q value does not fit in `bits`.
void qpack_matrix(int bits, int K, int N, int G, const uint8_t* q, int64_t ldq, const float* scales,
                  const float* zeros, int64_t lds, uint8_t* q_out, float* sz_out);

// The inverse view, for tests and the Python<->C++ round trip: q(k, n) and the dequantized W(k, n).
int qpacked_q(const QPackedMatrix& w, int k, int n);
float qpacked_dequant(const QPackedMatrix& w, int k, int n);

// y[m, n] (+)= sum_k x[m, k] * W[k, n] for the columns of panels [p_begin, p_end), m < M.
// x: [M, K] row stride ldx; y: [M, N] row stride ldy; columns >= N are never written.
using QGemmFn = void (*)(const float* x, int ldx, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin,
                         int p_end, bool accumulate);

// ---- int8 activations (W4A8 / W8A8, act_type = int8) ---------------------------------------
// x is quantized per (row m, block j of B consecutive k), symmetric, dynamic (llama.cpp's Q8
// activations, whose blocks are 32 as well); B = act_block(G) divides the weight's group size:
//   amax = max |x[m, k]| over the block;  inv = amax > kActTinyAmax ? 127 / amax : 0;  a = amax / 127
//   xq[m, k] = nearbyint(x[m, k] * inv)   (round half to even, |xq| <= 127)
//   xsum[m, j] = a[m, j] * (float)(sum of xq[m, k] over the block)   (the quantized x's sum: the
//                zero-point term must see the same x as the q term, or the quantization error is
//                multiplied by the uncentered q instead of by W = q*s - zs)
// and each output, with c_j = sum_k q[k, n] * xq[m, k] over block j (int32, exact), g = j*B / G:
//   acc = accumulate ? y : 0;  for j in order:  acc = fmaf((float)c_j, s_g * a_j, acc);
//                                              acc = fmaf(-zs_g, xsum_j, acc)
// Every table quantizes to the same bits, and every table that computes in int8 returns bit-
// identical y from the same QActs (the integer sums are exact, the fold is one order); a table
// without int8 dot products emulates the product in fp32 (qgemm_a8_via_fp32: the same numbers to
// rounding, no speed-up).
constexpr float kActTinyAmax = 1e-30f;  // below it the block quantizes to 0 (127 / amax would overflow)
constexpr int kActBlock = 32;  // blocks of 64 cost SmolLM2 int4 +0.53% perplexity over fp32 activations, of 32 +0.32%
inline int act_block(int G) { return G % kActBlock == 0 ? kActBlock : G; }

struct QActs {
  int K = 0, B = 0;              // B: act_block(the weight's group size)
  const int8_t* q = nullptr;     // xq [M][ldq], ldq >= K, 64-byte aligned rows
  int ldq = 0;
  const float* scale = nullptr;  // a [M][ldg]
  const float* sum = nullptr;    // xsum [M][ldg] = a * sum(xq)
  int ldg = 0;                   // >= K / B
};
inline size_t qacts_ldq(int K) { return ((size_t)K + 63) / 64 * 64; }

// Quantizes rows [0, M) of x [M, K] (row stride ldx) in blocks of B, as above, into xq / a / xsum.
using QuantizeActsFn = void (*)(const float* x, int ldx, int M, int K, int B, int8_t* xq, int ldq, float* a,
                                float* xsum, int ldg);
// y[m, n] (+)= the product above for the columns of panels [p_begin, p_end), m < M; x.B must be
// act_block(the weight's group size) and x.K its K.
using QGemmA8Fn = void (*)(const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin, int p_end,
                           bool accumulate);

struct QKernelTable {
  const char* name;        // "ref", "avx2", "avx512", "avx512_vnni", "amx"
  QGemmFn qgemm;           // fp32 activations; handles bits 4 and 8
  QuantizeActsFn quantize_acts;
  QGemmA8Fn qgemm_a8;      // int8 activations
  bool int8_dot;           // false: qgemm_a8 emulates in fp32 (this CPU has no int8 dot products)
};

// The fp32 emulation of qgemm_a8 for tables without int8 dot products: x' = xq * a rows, then
// `fp` (that table's fp32-activation GEMM).
void qgemm_a8_via_fp32(QGemmFn fp, const QActs& x, const QPackedMatrix& w, float* y, int ldy, int M, int p_begin,
                       int p_end, bool accumulate);

const QKernelTable& reference_qkernels();
const QKernelTable& best_qkernels();                    // chosen once from the CPU's features
std::vector<const QKernelTable*> supported_qkernels();  // every table this CPU can run (ref first)

// Private to the kernels folder: the SIMD tables, defined in their ISA-flagged files.
const QKernelTable* amx_qkernels();
const QKernelTable* avx512_vnni_qkernels();
const QKernelTable* avx512_qkernels();
const QKernelTable* avx2_qkernels();

}  // namespace turbolm::kernels
