// The kernel interface: pure functions over raw pointers and explicit shapes. They allocate
// nothing and keep no globals. Every kernel has a scalar reference twin (kernels_ref.cc) and
// SIMD variants (*_avx2.cc, *_avx512.cc); a KernelTable groups one variant of each, and
// best_kernels() picks the table once from the CPU's features. tests/runtime/test_kernels_all.cc
// runs every table the CPU supports against the reference table.
//
// Conventions: activations are fp32; weights are fp16 or bf16 stored as uint16_t; a "row
// stride" (ld*) is in elements. Threading is the caller's: kernels that are worth splitting take
// a range ([p_begin, p_end) panels, [h_begin, h_end) heads) so a ThreadPool can share them out.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace turbolm::kernels {

enum class WDType : int { kF16 = 0, kBF16 = 1 };
enum class KVType : int { kF16 = 0, kF32 = 1, kI8 = 2 };

// ---- packed linear weights --------------------------------------------------------------
// A linear weight W[K, N] (K = in, N = out) is repacked once at load time into column panels,
// so that one k-step of one panel is one 64-byte cache line of fp16:
//   packed[p][k][j] = W[k, p * kPanel + j]     p < n_panels = ceil(N / kPanel), j < kPanel
// with zeros past N. The source may be any strided view (the workspace stores linears as
// [in, out] but output.weight as [vocab, hidden], i.e. transposed).
constexpr int kPanel = 32;

struct PackedMatrix {
  WDType dtype = WDType::kF16;
  int K = 0, N = 0, n_panels = 0;
  const uint16_t* data = nullptr;  // [n_panels][K][kPanel], 64-byte aligned, owned by the caller
};

inline size_t packed_elems(int K, int N) { return (size_t)((N + kPanel - 1) / kPanel) * K * kPanel; }
// src(k, n) = src[k * stride_k + n * stride_n]; out: packed_elems(K, N) elements.
void pack_matrix(const uint16_t* src, int K, int N, int64_t stride_k, int64_t stride_n, uint16_t* out);

// y[m, n] (+)= sum_k x[m, k] * W[k, n] for the columns of panels [p_begin, p_end), m < M.
// x: [M, K] row stride ldx; y: [M, N] row stride ldy; columns >= N are never written.
using GemmFn = void (*)(const float* x, int ldx, const PackedMatrix& w, float* y, int ldy, int M,
                        int p_begin, int p_end, bool accumulate);

// ---- bf16 dot products (act_type bf16, fp16 / bf16 workspaces) ------------------------------
// W[K, N] (K even) repacked for vdpbf16ps: 32-column panels of k-pairs, bf16 (RNE from fp16):
//   packed[p][kp][j][2] = bf16(W[2kp + {0, 1}, p * kPanel + j])       zeros past N
// One k-pair of a panel is 128 bytes: two registers of 16 lanes, each lane one (k, k+1) pair.
// The product rounds x to bf16 (RNE) and, per output, in k-pair order:
//   acc = accumulate ? y : 0;   acc = fmaf(x[2kp], w[2kp], fmaf(x[2kp + 1], w[2kp + 1], acc))
// which is vdpbf16ps' own arithmetic (odd element first, one rounding each), so the SIMD tables
// are bit-identical to the reference (for inputs without denormals: the instruction flushes them).
// Memory: the same 2 bytes per weight as the fp16 panels it replaces.
struct PackedBF16 {
  int K = 0, N = 0, n_panels = 0;
  const uint16_t* data = nullptr;  // [n_panels][K / 2][kPanel][2], 64-byte aligned, owned by the caller
};
// From fp16 / bf16 panels (PackedMatrix); out: packed_elems(K, N) elements. K must be even.
void pack_bf16_pairs(const PackedMatrix& src, uint16_t* out);
uint16_t f32_to_bf16(float f);  // round to nearest even (NaN stays NaN)
// y[m, n] (+)= the product above for the columns of panels [p_begin, p_end), m < M.
using GemmBF16Fn = void (*)(const float* x, int ldx, const PackedBF16& w, float* y, int ldy, int M, int p_begin,
                            int p_end, bool accumulate);

// ---- paged KV cache -----------------------------------------------------------------------
// One layer's K (or V) of token slot s of block b, kv head h, lives at
//   base + b * block_stride + h * head_stride + s * head_dim          (elements of `type`)
// A sequence's logical position t is slot t % block_len of block block_table[t / block_len].
struct PagedKV {
  void* k_base = nullptr;
  void* v_base = nullptr;
  int64_t block_stride = 0;
  int64_t head_stride = 0;
  const int32_t* block_table = nullptr;
  int block_len = 0;
  KVType type = KVType::kF16;
  // int8 only (DESIGN.md §3): stores round((f - zp) / scale) clamped to [-128, 127], reads q*scale+zp.
  float k_scale = 1.f, k_zp = 0.f, v_scale = 1.f, v_zp = 0.f;
};

// Writes k, v: [n, kv_heads, head_dim] (row stride ld) for positions start_pos .. start_pos+n-1.
using KVStoreFn = void (*)(const float* k, const float* v, int ld, int n, int start_pos, int kv_heads,
                           int head_dim, const PagedKV& kv);

// How a layer's scores are formed: s = q·k · scale, then (softcap > 0) s = softcap · tanh(s / softcap)
// (Gemma 2); window > 0: query position p sees keys (p - window, p] only (sliding-window layers of
// Mistral / Gemma), otherwise [0, p].
struct AttnParams {
  float scale = 1.f;
  int window = 0;
  float softcap = 0.f;
};

// Causal attention of one sequence's n new query tokens (positions start_pos .. start_pos+n-1)
// over its cache, which already holds K/V for positions [0, start_pos + n). Query heads
// [h_begin, h_end) only; head h reads kv head h / (heads / kv_heads).
// q: [n, heads, head_dim] row stride ldq; out: same shape, row stride ldo.
// scratch: at least (start_pos + n) floats, private to the calling thread.
using AttentionFn = void (*)(const float* q, int ldq, int n, int start_pos, int heads, int kv_heads,
                             int head_dim, const PagedKV& kv, const AttnParams& ap, float* out, int ldo,
                             int h_begin, int h_end, float* scratch);

// ---- small elementwise kernels --------------------------------------------------------------
// y[m, :] = x[m, :] / rms(x[m, :]) * w, rows of length d (row strides ldx, ldy). w is fp32.
using RMSNormFn = void (*)(const float* x, int ldx, const float* w, float eps, int M, int d, float* y, int ldy);
// Interleaved-pair RoPE (the workspace permutes HF's rotate-half q/k columns into pairs):
// for each token t, head h, i < rot_dim/2:  (x[2i], x[2i+1]) rotated by pos[t] * inv_freq[i].
// x: [T, heads, head_dim] row stride ldx, modified in place.
using RopeFn = void (*)(float* x, int ldx, int T, int heads, int head_dim, int rot_dim, const int32_t* pos,
                        const float* inv_freq);
// out[i] = act(gate[i]) * up[i]: silu (SwiGLU, silu_mul) or the tanh-approximated gelu
// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (GeGLU of Gemma, gelu_mul).
using SiluMulFn = void (*)(const float* gate, const float* up, float* out, int n);
// Converts n fp16 / bf16 values to fp32 (embedding rows).
using ToF32Fn = void (*)(const uint16_t* src, WDType dtype, float* dst, int n);
// max(x[0..n)), n >= 1 (the sampler's softmax over a vocabulary row).
using RowMaxFn = float (*)(const float* x, int n);
// out[i] = exp(x[i] - shift) for i < n; returns their sum (accumulated in fp32 lanes). out may be x.
using ExpSumFn = float (*)(const float* x, int n, float shift, float* out);
// x[i] = cap · tanh(x[i] / cap) for i < n, in place (Gemma 2's final logit soft-capping), cap > 0.
using SoftcapFn = void (*)(float* x, int n, float cap);

struct KernelTable {
  const char* name;  // "ref", "avx2", "avx512"
  GemmFn gemm;
  KVStoreFn kv_store;
  AttentionFn attention;
  RMSNormFn rmsnorm;
  RopeFn rope;
  SiluMulFn silu_mul;
  SiluMulFn gelu_mul;
  ToF32Fn to_f32;
  RowMaxFn row_max;
  ExpSumFn exp_sum;
  GemmBF16Fn gemm_bf16 = nullptr;  // nullptr: this CPU has no bf16 dot products (act_type bf16 refused)
  // gemm_bf16 on AMX tiles: tdpbf16ps rounds in its own order (not vdpbf16ps'), so it matches the
  // reference to fp32 rounding, not bit for bit; every M runs on the tiles (batch invariance).
  bool bf16_tiles = false;
  SoftcapFn softcap = nullptr;  // set by every table (ref: scalar tanh; avx512 and tables built on it: SIMD)
};

const KernelTable& reference_kernels();
const KernelTable& best_kernels();                    // chosen once from the CPU's features
std::vector<const KernelTable*> supported_kernels();  // every table this CPU can run (ref first)

// fp16 / bf16 scalar conversions (used by loaders and reference kernels).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
inline float bf16_to_f32(uint16_t h) {
  union { uint32_t u; float f; } v{(uint32_t)h << 16};
  return v.f;
}

}  // namespace turbolm::kernels
