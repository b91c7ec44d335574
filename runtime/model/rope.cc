#include "model/rope.h"

#include <cmath>

namespace turbolm {

void rope_inv_freq(const ModelConfig& cfg, int seq_len, float* inv_freq) {
  const int rot = cfg.rotary_embedding;
  double base = cfg.rope_theta;
  const double max_pos = cfg.max_position_embeddings;
  if (cfg.rope_scaling_factor > 0 && seq_len > max_pos) {
    const double f = cfg.rope_scaling_factor;
    base *= std::pow(f * seq_len / max_pos - (f - 1), (double)rot / (rot - 2));
  }
  // HF computes base ** (arange(0, rot, 2) / rot) in fp32 and inverts it; so do we, so that the
  // angles pos * inv_freq round the same way.
  for (int i = 0; i < rot / 2; ++i)
    inv_freq[i] = 1.f / std::pow((float)base, (float)(2 * i) / (float)rot);
}

float logn_scale(const ModelConfig& cfg, int pos) {
  if (!cfg.use_logn_attn || pos + 1 <= cfg.max_position_embeddings) return 1.f;
  return (float)(std::log((double)pos + 1) / std::log((double)cfg.max_position_embeddings));
}

}  // namespace turbolm
