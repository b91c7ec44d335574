#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/kernels.h"

namespace turbolm {

bool is_greedy(const GenerationConfig& g) { return g.temperature < kGreedyTemperature || g.top_k == 1; }

namespace {

// Per-thread scratch of the vocabulary's size: sampling runs on the engine thread or, one row per
// range, on the model's pool threads, and must not allocate per token.
struct Scratch {
  std::vector<float> p;
  std::vector<float> raw;  // the unprocessed row, when logprobs are wanted
  std::vector<int32_t> idx;
  std::vector<uint8_t> seen;
};
Scratch& scratch(int vocab) {
  thread_local Scratch s;
  if ((int)s.p.size() < vocab) {
    s.p.resize(vocab);
    s.raw.resize(vocab);
    s.idx.resize(vocab);
    s.seen.resize(vocab);
  }
  return s;
}

const kernels::KernelTable& K() {
  static const kernels::KernelTable& k = kernels::best_kernels();
  return k;
}

}  // namespace

void apply_repetition_penalty(float* logits, int vocab, const int32_t* context, int n, float penalty) {
  if (penalty == 1.f || n == 0) return;
  std::vector<uint8_t>& seen = scratch(vocab).seen;
  std::fill(seen.begin(), seen.begin() + vocab, 0);
  for (int i = 0; i < n; ++i) {
    int32_t t = context[i];
    if (t < 0 || t >= vocab || seen[t]) continue;
    seen[t] = 1;
    float& x = logits[t];
    x = x > 0.f ? x / penalty : x * penalty;
  }
}

void apply_presence_frequency(float* logits, int vocab, const int32_t* generated, int n, float presence,
                              float frequency) {
  if ((presence == 0.f && frequency == 0.f) || n <= 0) return;
  // Counts in the scratch's byte buffer would overflow past 255 repeats: count with a sort of a
  // copy instead (n is the request's output, small next to the vocabulary).
  std::vector<int32_t> toks(generated, generated + n);
  std::sort(toks.begin(), toks.end());
  for (size_t i = 0; i < toks.size();) {
    size_t j = i;
    while (j < toks.size() && toks[j] == toks[i]) ++j;
    const int32_t t = toks[i];
    if (t >= 0 && t < vocab) logits[t] -= frequency * (float)(j - i) + presence;
    i = j;
  }
}

void apply_token_mask(float* logits, int vocab, const uint32_t* allowed) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int w = 0; w * 32 < vocab; ++w) {
    const uint32_t bits = allowed[w];
    if (bits == 0xffffffffu) continue;
    const int end = std::min(vocab, w * 32 + 32);
    for (int t = w * 32; t < end; ++t)
      if (!(bits >> (t - w * 32) & 1u)) logits[t] = kNegInf;
  }
}

void apply_logit_bias(float* logits, int vocab, const std::vector<std::pair<int32_t, float>>& bias) {
  for (const auto& [t, b] : bias) {
    if (t < 0 || t >= vocab) continue;
    logits[t] = b <= -100.f ? -std::numeric_limits<float>::infinity() : logits[t] + b;
  }
}

void apply_temperature(float* logits, int vocab, float t) {
  if (t == 1.f) return;
  float inv = 1.f / t;
  for (int i = 0; i < vocab; ++i) logits[i] *= inv;
}

int32_t argmax(const float* logits, int vocab) {
  return (int32_t)(std::max_element(logits, logits + vocab) - logits);  // first of equal maxima
}

float log_softmax_at(const float* logits, int vocab, int32_t token) {
  const float m = K().row_max(logits, vocab);
  const double sum = K().exp_sum(logits, vocab, m, scratch(vocab).p.data());
  return (float)((double)logits[token] - m - std::log(sum));
}

void top_k_desc(const float* row, int vocab, int k, int32_t* ids, float* vals) {
  k = std::min(k, vocab);
  if (k <= 0) return;
  int n = 0;  // filled so far; ids/vals sorted descending
  for (int i = 0; i < vocab; ++i) {
    const float v = row[i];
    if (n == k && !(v > vals[k - 1])) continue;  // also skips NaN
    if (std::isnan(v)) continue;
    int j = n < k ? n++ : k - 1;
    while (j > 0 && v > vals[j - 1]) {  // strict: an equal value stays behind the earlier index
      vals[j] = vals[j - 1];
      ids[j] = ids[j - 1];
      --j;
    }
    vals[j] = v;
    ids[j] = i;
  }
  for (int i = 0; n < k && i < vocab; ++i)  // a row of NaNs: fill with the first ids left
    if (std::isnan(row[i])) {
      vals[n] = row[i];
      ids[n++] = i;
    }
}

TokenLogprob token_logprob(const float* row, int vocab, int32_t token, int k) {
  const float m = K().row_max(row, vocab);
  const double lse = (double)m + std::log(K().exp_sum(row, vocab, m, scratch(vocab).p.data()));
  TokenLogprob out;
  out.logprob = (float)((double)row[token] - lse);
  k = std::min(k, vocab);
  if (k > 0) {
    int32_t ids[kMaxTopLogprobs];
    float vals[kMaxTopLogprobs];
    k = std::min(k, kMaxTopLogprobs);
    top_k_desc(row, vocab, k, ids, vals);
    out.top.resize(k);
    for (int i = 0; i < k; ++i) out.top[i] = {ids[i], (float)((double)vals[i] - lse)};
  }
  return out;
}

std::vector<std::pair<int32_t, float>> top_k_top_p(const float* logits, int vocab, int top_k, float top_p) {
  // Softmax over the whole row first; top-k renormalization is a rescale of these.
  Scratch& sc = scratch(vocab);
  float* p = sc.p.data();
  const double total = K().exp_sum(logits, vocab, K().row_max(logits, vocab), p);

  int32_t* idx = sc.idx.data();
  std::iota(idx, idx + vocab, 0);
  auto more_probable = [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
  int k = (top_k > 0 && top_k < vocab) ? top_k : vocab;
  if (k < vocab) std::nth_element(idx, idx + k, idx + vocab, more_probable);  // the top k, unordered: O(vocab)
  // Sort only as much as needed: top-p usually keeps a few tokens, so sort a prefix and double it
  // until the kept set is inside the sorted prefix.
  int sorted = 0;
  auto sort_prefix = [&](int upto) {
    upto = std::min(upto, k);
    if (upto <= sorted) return;
    std::partial_sort(idx + sorted, idx + upto, idx + k, more_probable);
    sorted = upto;
  };
  double mass_k = 0;  // top-k mass (renormalizer)
  if (k < vocab) {
    for (int i = 0; i < k; ++i) mass_k += p[idx[i]];
  } else {
    mass_k = total;
  }
  int keep = k;
  if (top_p < 1.f) {
    double cum = 0, target = (double)top_p * mass_k;
    keep = 0;
    int chunk = 64;
    while (true) {
      sort_prefix(std::max(sorted, std::min(k, chunk)));
      while (keep < sorted) {
        // keep token `keep` iff the mass before it is < top_p (HF: at least one token kept)
        if (keep > 0 && cum >= target) break;
        cum += p[idx[keep]];
        ++keep;
      }
      if (keep < sorted || sorted == k) break;
      chunk *= 2;
    }
  } else {
    sort_prefix(k);
  }
  std::vector<std::pair<int32_t, float>> out(keep);
  double mass = 0;
  for (int i = 0; i < keep; ++i) mass += p[idx[i]];
  for (int i = 0; i < keep; ++i) out[i] = {idx[i], (float)(p[idx[i]] / mass)};
  return out;
}

double uniform01(std::mt19937_64& rng) { return (double)(rng() >> 11) * (1.0 / 9007199254740992.0); }

int32_t pick(float* logits, int vocab, const GenerationConfig& g, const std::vector<int32_t>& context,
             std::mt19937_64& rng, int prompt_len, const uint32_t* allowed) {
  if (allowed) apply_token_mask(logits, vocab, allowed);
  apply_logit_bias(logits, vocab, g.logit_bias);
  apply_repetition_penalty(logits, vocab, context.data(), (int)context.size(), g.repetition_penalty);
  const int p0 = prompt_len < 0 ? (int)context.size() : std::min(prompt_len, (int)context.size());
  apply_presence_frequency(logits, vocab, context.data() + p0, (int)context.size() - p0, g.presence_penalty,
                           g.frequency_penalty);
  if (is_greedy(g)) return argmax(logits, vocab);
  apply_temperature(logits, vocab, g.temperature);
  const bool whole_vocab = !(g.top_k > 0 && g.top_k < vocab) && !(g.top_p < 1.f);
  if (whole_vocab) {
    // No truncation (OpenAI's defaults): draw from the softmax in index order, one pass for the
    // exponentials and one for the cumulative sum, nothing sorted or allocated.
    float* p = scratch(vocab).p.data();
    const float m = K().row_max(logits, vocab);
    const double total = K().exp_sum(logits, vocab, m, p);
    const double u01 = uniform01(rng);
    auto draw = [&](double u) {
      double cum = 0;
      for (int i = 0; i < vocab; ++i)
        if (u < (cum += p[i])) return i;
      return -1;
    };
    int32_t token = draw(u01 * total);
    if (token < 0) {
      // `total` (fp32 lanes) came out above the double running sum: draw again on the exact mass
      double exact = 0;
      for (int i = 0; i < vocab; ++i) exact += p[i];
      token = draw(u01 * exact);
    }
    if (token < 0) token = argmax(logits, vocab);  // no finite mass (a NaN row): never an invalid id
    return token;
  }
  auto cand = top_k_top_p(logits, vocab, g.top_k, g.top_p);
  double u = uniform01(rng), cum = 0;
  for (auto& c : cand) {
    cum += c.second;
    if (u < cum) return c.first;
  }
  return cand.back().first;  // rounding: u beyond the summed probabilities
}

SampleResult sample(float* logits, int vocab, const GenerationConfig& g, const std::vector<int32_t>& context,
                    std::mt19937_64& rng, int prompt_len, const uint32_t* allowed) {
  float* raw = nullptr;
  if (g.logprobs) {
    raw = scratch(vocab).raw.data();
    std::copy(logits, logits + vocab, raw);
  }
  SampleResult r;
  r.token = pick(logits, vocab, g, context, rng, prompt_len, allowed);
  if (raw) {
    TokenLogprob lp = token_logprob(raw, vocab, r.token, g.top_logprobs);
    r.logprob = lp.logprob;
    r.top = std::move(lp.top);
  }
  return r;
}

int stop_match(const int32_t* generated, int n, const std::vector<std::vector<int32_t>>& stops) {
  int best = 0;
  for (auto& s : stops) {
    int m = (int)s.size();
    if (m == 0 || m > n || m <= best) continue;
    if (std::equal(s.begin(), s.end(), generated + n - m)) best = m;
  }
  return best;
}

int stop_holdback(const int32_t* generated, int n, const std::vector<std::vector<int32_t>>& stops) {
  int best = 0;
  for (auto& s : stops) {
    // longest proper prefix of s equal to the tail of generated
    for (int len = std::min<int>(n, (int)s.size() - 1); len > best; --len) {
      if (std::equal(s.begin(), s.begin() + len, generated + n - len)) { best = len; break; }
    }
  }
  return best;
}

}  // namespace turbolm
