#include "model/rope.h"

#include <cmath>

namespace turbolm {

void rope_inv_freq(const ModelConfig& cfg, int seq_len, float* inv_freq, bool local) {
  const int rot = cfg.rotary_embedding;
  if (local && cfg.rope_local_theta > 0) {
    for (int i = 0; i < rot / 2; ++i) inv_freq[i] = 1.f / std::pow(cfg.rope_local_theta, (float)(2 * i) / (float)rot);
    return;
  }
  double base = cfg.rope_theta;
  const double max_pos = cfg.max_position_embeddings;
  const std::string& type = cfg.rope_type;
  const bool dynamic = type == "dynamic" || (type.empty() && cfg.rope_scaling_factor > 0);
  if (dynamic && cfg.rope_scaling_factor > 0 && seq_len > max_pos) {
    const double f = cfg.rope_scaling_factor;
    base *= std::pow(f * seq_len / max_pos - (f - 1), (double)rot / (rot - 2));
  }
  // HF computes base ** (arange(0, rot, 2) / rot) in fp32 and inverts it; so do we, so that the
  // angles pos * inv_freq round the same way.
  for (int i = 0; i < rot / 2; ++i)
    inv_freq[i] = 1.f / std::pow((float)base, (float)(2 * i) / (float)rot);
  const float factor = cfg.rope_scaling_factor;
  const bool use_long = type == "longrope" && seq_len > cfg.rope_original_max_position_embeddings;
  const std::vector<float>& ff = use_long ? cfg.rope_long_freq_factors : cfg.rope_freq_factors;
  if (!ff.empty()) {  // HF computes 1 / (factor * base^(2i/rot)) in fp32
    for (int i = 0; i < rot / 2; ++i)
      inv_freq[i] = 1.f / (ff[i] * std::pow((float)base, (float)(2 * i) / (float)rot));
  } else if (type == "linear" && factor > 0) {
    for (int i = 0; i < rot / 2; ++i) inv_freq[i] /= factor;  // HF: positions / factor
  } else if (type == "llama3" && factor > 0) {
    // HF's _compute_llama3_parameters, in fp32 as there: wavelengths beyond the original
    // context / low_freq_factor are divided by factor, those below original / high_freq_factor
    // kept, and the band between interpolated smoothly.
    const float old_ctx = (float)cfg.rope_original_max_position_embeddings;
    const float lo = cfg.rope_low_freq_factor, hi = cfg.rope_high_freq_factor;
    const float low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
    for (int i = 0; i < rot / 2; ++i) {
      const float f = inv_freq[i];
      const float wavelen = (float)(2 * M_PI) / f;
      float out = wavelen > low_wavelen ? f / factor : f;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        const float smooth = (old_ctx / wavelen - lo) / (hi - lo);
        out = (1 - smooth) * out / factor + smooth * out;
      }
      inv_freq[i] = out;
    }
  }
}

float logn_scale(const ModelConfig& cfg, int pos) {
  if (!cfg.use_logn_attn || pos + 1 <= cfg.max_position_embeddings) return 1.f;
  return (float)(std::log((double)pos + 1) / std::log((double)cfg.max_position_embeddings));
}

}  // namespace turbolm
