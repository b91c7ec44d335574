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

namespace turbolm {

// An owned, 64-byte aligned array (PackedMatrix panels must start on a cache line).
template <typename T>
class AlignedArray {
 public:
  AlignedArray() = default;
  explicit AlignedArray(size_t n);
  T* data() { return p_.get(); }
  const T* data() const { return p_.get(); }
  size_t size() const { return n_; }

 private:
  struct Free { void operator()(T* p) const; };
  std::unique_ptr<T, Free> p_;
  size_t n_ = 0;
};

// A linear layer on one rank: packed W[K = in, N = out] plus its optional fp32 bias [N].
struct Linear {
  kernels::PackedMatrix w;       // view into `panels`
  AlignedArray<uint16_t> panels;  // [n_panels][K][kPanel]
  std::vector<float> bias;        // [N], empty when the layer has none
};

// One decoder layer's slice on one rank (Hr = head_num/tp, KVr = kv_head_num/tp, Ir = inter/tp).
struct LayerWeights {
  std::vector<float> attn_norm;  // [hidden]
  std::vector<float> ffn_norm;   // [hidden]
  Linear w_qkv;                  // [hidden, (Hr + 2·KVr)·D], columns [q_r | k_r | v_r]; bias [(Hr+2·KVr)·D]
  Linear wo;                     // [Hr·D, hidden]; bias [hidden] is whole: added once, after the sum over ranks
  Linear w1;                     // gate [hidden, Ir]
  Linear w3;                     // up   [hidden, Ir]
  Linear w2;                     // down [Ir, hidden]
};

struct RankWeights {
  std::vector<LayerWeights> layers;  // [num_layer]
};

// Tensors every rank reads, held once.
struct SharedWeights {
  kernels::WDType dtype = kernels::WDType::kF16;
  AlignedArray<uint16_t> tok_embeddings;  // [vocab, hidden] raw fp16/bf16 rows
  std::vector<float> norm;                // [hidden] final norm
  Linear output;                          // packed from [vocab, hidden] as K = hidden, N = vocab
};

struct LlamaWeights {
  SharedWeights shared;
  std::vector<RankWeights> ranks;  // [tp]
};

// Loads `weights_dir` for `tp` ranks. `cfg` is the workspace's config.ini (its tensor_para_size
// is the split on disk). Throws turbolm::Error naming the file and what to do.
LlamaWeights load_weights(const std::string& weights_dir, const ModelConfig& cfg, int tp);

}  // namespace turbolm
