// LlamaWeights: a workspace's tensors (DESIGN.md §3), loaded once and repacked for the kernels.
//
// Every file is memory-mapped, its byte size checked against the shape config.ini implies, and
// then copied out: linears into PackedMatrix panels (kernels.h), norms and biases into fp32. The
// mapping is dropped as soon as the tensor is repacked, so the resident set is one copy of the
// model. A tp=1 workspace run at tp=N is sliced here exactly as the converter would have split it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "kernels/kernels.h"
#include "kernels/qgemm.h"

namespace turbolm {

// An owned, 64-byte aligned array (PackedMatrix panels must start on a cache line). With
// `huge_pages`, an array of at least kHugePageBytes is 2 MiB aligned and madvise(MADV_HUGEPAGE)d
// (Linux; a no-op elsewhere): decode streams every weight once per token, and 2 MiB pages cut the
// TLB misses of that stream. Smaller arrays stay 64-byte aligned: they cannot fill a huge page, and
// rounding them up would waste memory.
constexpr size_t kHugePageBytes = size_t(2) << 20;
template <typename T>
class AlignedArray {
 public:
  AlignedArray() = default;
  explicit AlignedArray(size_t n, bool huge_pages = false);
  T* data() { return p_.get(); }
  const T* data() const { return p_.get(); }
  size_t size() const { return n_; }

 private:
  struct Free { void operator()(T* p) const; };
  std::unique_ptr<T, Free> p_;
  size_t n_ = 0;
};

// A linear layer on one rank: packed W[K = in, N = out] plus its optional fp32 bias [N]. Either
// fp16/bf16 panels (`w`) or, for weight_type int4/int8, quantized panels (`qw`, kernels/qgemm.h).
struct Linear {
  kernels::PackedMatrix w;        // view into `panels` (fp16 / bf16 workspaces)
  AlignedArray<uint16_t> panels;  // [n_panels][K][kPanel]
  kernels::QPackedMatrix qw;      // views into `qdata` / `qsz` (int4 / int8 workspaces)
  AlignedArray<uint8_t> qdata;    // [n_panels][K][kQRowBytes(bits)]
  AlignedArray<float> qsz;        // [n_panels][K / G][2][kPanel]
  kernels::PackedBF16 wb;         // act_type bf16: view into `bpanels` (which then replace `panels`)
  AlignedArray<uint16_t> bpanels; // [n_panels][K / 2][kPanel][2] bf16 k-pairs
  std::vector<float> bias;        // [N], empty when the layer has none

  bool quantized() const { return qw.q != nullptr; }
  int n_panels() const { return quantized() ? qw.n_panels : w.n_panels; }
};

// One decoder layer's slice on one rank (Hr = head_num/tp, KVr = kv_head_num/tp, Ir = inter/tp).
struct LayerWeights {
  // quant_policy = 4 (int8 KV): [k_scale, k_zp, v_scale, v_zp] from layers.i.past_kv_scale.r.weight
  float kv_qparams[4] = {1.f, 0.f, 1.f, 0.f};
  std::vector<float> attn_norm;  // [hidden]
  std::vector<float> ffn_norm;   // [hidden]
  std::vector<float> q_norm, k_norm;  // [D] each, with qk_norm (Qwen3); empty otherwise
  std::vector<float> post_attn_norm, post_ffn_norm;  // [hidden] each, with post_norm (Gemma); empty otherwise
  Linear w_qkv;                  // [hidden, (Hr + 2·KVr)·D], columns [q_r | k_r | v_r]; bias [(Hr+2·KVr)·D]
  Linear wo;                     // [Hr·D, hidden]; bias [hidden] is whole: added once, after the sum over ranks
  Linear w1;                     // gate [hidden, Ir]
  Linear w3;                     // up   [hidden, Ir]
  Linear w2;                     // down [Ir, hidden]
};

struct RankWeights {
  std::vector<LayerWeights> layers;  // [num_layer]
};

// Tensors every rank reads, held once. With embedding_type float, quantized workspaces keep the
// embeddings in fp16 and quantize their lm head (`output`) to int8 at load time
// (lm_head_group_size; see load_weights). With embedding_type int8 / int4 the rows stay as stored
// and the lm head is packed from the stored integers (tok_embeddings' own when tied).
struct SharedWeights {
  kernels::WDType dtype = kernels::WDType::kF16;
  AlignedArray<uint16_t> tok_embeddings;  // embedding_type float: [vocab, hidden] raw fp16/bf16 rows
  int emb_bits = 0;                       // 8 / 4 with a quantized embedding_type, else 0
  int emb_G = 0;                          // embedding_group_size
  AlignedArray<uint8_t> emb_q;            // [vocab, hidden] codes, or [vocab, hidden / 2] two per byte (low first)
  AlignedArray<float> emb_s, emb_z;       // [vocab, hidden / G] scales and zero points (q units)
  std::vector<float> norm;                // [hidden] final norm
  Linear output;                          // packed from [vocab, hidden] as K = hidden, N = vocab

  // Row `token` of the embedding table as fp32 into out[hidden]: (q - zero) * scale when quantized.
  void embedding_row(int token, int hidden, float* out) const;
};

// The runtime keeps the lm head of int4/int8 workspaces in int8: read once per decoded token, the
// fp16 [vocab, hidden] matrix is about half of an int4 decode step's bytes (SmolLM2-135M: 57 MB
// next to ~66 MB of int4 linears and scales; 32 MB in int8). Load-time RTN, asymmetric, per group
// of G rows of K = hidden, with the arithmetic of the converter's quantize_rtn (converter/quant.py
// quantize_lm_head is the Python twin the tests use as oracle).
constexpr int kLMHeadBits = 8;
// G = 64 if it divides hidden, else 32, else the smallest multiple of kQGroupAlign dividing hidden;
// 0 when none does (the lm head then stays fp16).
int lm_head_group_size(int hidden);

// Workspace format versions this runtime reads (config.ini format_version): 1 = the fp16/bf16
// LMDeploy v0.1.0 layout; 2 = adds the int4/int8 linears of workspace_template/README.md; 3 = adds
// the int8/int4 embedding table and lm head (embedding_type).
constexpr int kFormatVersion = 3;
constexpr int kQuantEmbeddingFormatVersion = 3;
constexpr int kQuantFormatVersion = 2;
// config.ini quant_policy: 0 = fp16 KV cache, 4 = int8 KV cache (needs past_kv_scale files).
constexpr int kQuantPolicyKVInt8 = 4;

struct LlamaWeights {
  SharedWeights shared;
  std::vector<RankWeights> ranks;  // [tp]
};

// Loads `weights_dir` for `tp` ranks. `cfg` is the workspace's config.ini (its tensor_para_size
// is the split on disk). Throws turbolm::Error naming the file and what to do.
LlamaWeights load_weights(const std::string& weights_dir, const ModelConfig& cfg, int tp);

}  // namespace turbolm
