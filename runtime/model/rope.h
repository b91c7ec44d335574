// Position encodings beyond the kernel: the RoPE frequencies of one sequence (with HF's dynamic
// NTK scaling) and Qwen-style logN attention scaling. Pure functions of the config and a length.
#pragma once
#include "core/config.h"

namespace turbolm {

// inv_freq[i] = base^(-2i / rot_dim), i < rot_dim / 2, for a sequence that is `seq_len` tokens long
// after this step. base = rope_theta, except with dynamic NTK (rope_scaling_factor > 0) past
// max_position_embeddings, where, as HF's LlamaDynamicNTKScalingRotaryEmbedding,
//   base = theta * ((factor * seq_len / max_pos) - (factor - 1)) ^ (rot_dim / (rot_dim - 2)).
// Keys already cached keep the frequencies they were rotated with, as in HF with a KV cache.
// Then the scaling of rope_type (linear, llama3, or per-frequency factors: yarn, longrope).
// local = true: the frequencies of sliding-window layers when rope_local_theta > 0 (Gemma 3):
// base rope_local_theta, no scaling.
void rope_inv_freq(const ModelConfig& cfg, int seq_len, float* inv_freq /* [rot_dim / 2] */, bool local = false);

// The factor q is multiplied by at 0-based position `pos` when use_logn_attn is set:
// log(pos + 1) / log(max_pos) once pos + 1 > max_pos, else 1.
float logn_scale(const ModelConfig& cfg, int pos);

}  // namespace turbolm
