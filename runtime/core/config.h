// ModelConfig: the workspace's config.ini ([llama] section), read by the runtime's one loader.
// The Python schema (python/turbolm/config.py) writes it; tests/python/test_config_schema.py
// checks both sides agree on every key, default and error.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace turbolm {

enum class WeightType { kFP16, kBF16, kINT4, kINT8 };
const char* to_string(WeightType t);

struct ModelConfig {
  std::string model_name;
  int tensor_para_size = 1;
  int head_num = 0;
  int kv_head_num = 0;
  int vocab_size = 0;
  int num_layer = 0;
  int inter_size = 0;
  float norm_eps = 1e-6f;
  int attn_bias = 0;
  int start_id = 1;
  int end_id = 2;
  int session_len = 2048;
  WeightType weight_type = WeightType::kFP16;
  int rotary_embedding = 0;
  float rope_theta = 10000.f;
  int size_per_head = 0;
  int group_size = 0;
  int max_batch_size = 64;
  int max_context_token_num = 1;
  int step_length = 1;
  float cache_max_entry_count = 0.5f;
  int cache_block_seq_len = 128;
  int cache_chunk_size = 1;
  int use_context_fmha = 1;
  int quant_policy = 0;
  int max_position_embeddings = 2048;
  float rope_scaling_factor = 0.f;
  int use_logn_attn = 0;
  // extra keys (beyond LMDeploy v0.1.0)
  int hidden_units = 0;  // 0 in the file: head_num * size_per_head
  int format_version = 1;
  int enable_prefix_caching = 1;
  // RoPE scaling (HF's rope_scaling): "default", "dynamic" (NTK, rope_scaling_factor past
  // max_position_embeddings), "linear" (positions / factor) or "llama3" (Llama 3.1's smoothed
  // low-frequency scaling). An empty rope_type with rope_scaling_factor > 0 means dynamic.
  std::string rope_type;
  float rope_low_freq_factor = 1.f;    // llama3
  float rope_high_freq_factor = 4.f;   // llama3
  int rope_original_max_position_embeddings = 8192;  // llama3
  int qk_norm = 0;  // 1: RMSNorm over each q and k head (weights [size_per_head]) before RoPE (Qwen3)
  // "float": the linears multiply fp32 activations; "int8" (int4/int8 workspaces): activations
  // are quantized per (token, block of 32) to int8 and multiplied on int8 dot products (kernels/qgemm.h);
  // "bf16" (fp16/bf16 workspaces): activations and weights rounded to bf16, bf16 dot products.
  std::string act_type = "float";
  // Architecture keys beyond LLaMA (Gemma 2/3, Mistral), each a plain switch of the forward pass:
  std::string hidden_act = "silu";  // silu (SwiGLU) | gelu_tanh (GeGLU)
  float norm_offset = 0.f;          // RMSNorm multiplies by (norm_offset + w) (Gemma: 1)
  float embedding_scale = 1.f;      // embedding rows multiplied by this (Gemma: sqrt(hidden))
  int post_norm = 0;                // 1: RMSNorm of attention and FFN outputs before the residual add
  float attn_scale = 0.f;           // score scale; 0: 1/sqrt(size_per_head)
  float attn_softcap = 0.f;         // > 0: scores = cap * tanh(scores / cap)
  float final_softcap = 0.f;        // > 0: logits = cap * tanh(logits / cap)
  int sliding_window = 0;           // > 0: sliding layers attend to the last sliding_window positions
  std::string sliding_layers;       // one 0/1 per layer ("" = every layer slides when sliding_window > 0)
  float rope_local_theta = 0.f;     // > 0: sliding layers use this RoPE base, unscaled (Gemma 3)
  // Per-frequency RoPE divisors, one per rotary pair (yarn, longrope, GGUF rope_freqs): inv_freq[i]
  // is divided by rope_freq_factors[i]; with rope_type longrope, rope_long_freq_factors replace
  // them once a sequence is longer than rope_original_max_position_embeddings.
  std::vector<float> rope_freq_factors, rope_long_freq_factors;
  float rope_attention_factor = 1.f;  // cos/sin multiplied by this (yarn / longrope mscale)
  // Mixed precision (an int4 workspace): the linears stored as int8, "i.name" comma-separated with
  // name one of w_qkv, wo, w1, w3, w2 (llama.cpp's _M recipes keep v / down wider).
  std::string int8_linears;
  // The embedding table and lm head: "float" (tok_embeddings.weight / output.weight in the
  // workspace's float dtype), or "int8" / "int4": per-row groups of embedding_group_size along
  // hidden, files tok_embeddings.{qweight,scales,zeros} (and output.* unless tie_word_embeddings).
  std::string embedding_type = "float";
  int embedding_group_size = 0;
  int tie_word_embeddings = 0;  // with a quantized embedding_type: 1 = the lm head is tok_embeddings
  int embedding_bits() const { return embedding_type == "int8" ? 8 : embedding_type == "int4" ? 4 : 0; }
  // 4 or 8 for linear `name` of layer l of a quantized workspace.
  int linear_bits(int l, const std::string& name) const;
  bool layer_slides(int l) const {
    return sliding_window > 0 && (sliding_layers.empty() || sliding_layers[l] == '1');
  }

  // Every key as text, in the file's spelling; used by the schema-agreement test.
  std::map<std::string, std::string> to_map() const;
};

// Parses `path` (a config.ini). Throws turbolm::Error naming the file and key on a missing file,
// malformed line, missing required key, bad value or inconsistent shapes.
ModelConfig load_config(const std::string& path);

}  // namespace turbolm
