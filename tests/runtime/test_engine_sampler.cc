// Sampler: every processing step against hand-computed values, seeded reproducibility, the
// sampled distribution, and whole-sequence stop matching.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "check.h"
#include "engine/sampler.h"

using namespace turbolm;

static std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back((float)std::log(p));
  return l;
}

TEST(greedy_is_argmax_first_of_ties) {
  std::vector<float> l = {0.5f, 3.f, -1.f, 3.f};
  CHECK_EQ(argmax(l.data(), 4), 1);
  GenerationConfig g;
  g.temperature = 0.f;
  g.top_k = 0;
  std::mt19937_64 rng(0);
  CHECK_EQ(sample(l.data(), 4, g, {}, rng).token, 1);
  g.temperature = 1.f;
  g.top_k = 1;  // top_k == 1 is greedy too, whatever the temperature
  auto l2 = l;
  CHECK_EQ(sample(l2.data(), 4, g, {}, rng).token, 1);
  CHECK(is_greedy(g));
}

TEST(repetition_penalty_hf_semantics) {
  std::vector<float> l = {2.f, -2.f, 1.f, 0.5f, 0.f};
  std::vector<int32_t> ctx = {0, 1, 1, 4};  // 1 twice: penalized once; 4 has logit 0
  apply_repetition_penalty(l.data(), 5, ctx.data(), (int)ctx.size(), 2.f);
  CHECK_NEAR(l[0], 1.f, 0);    // > 0: divided
  CHECK_NEAR(l[1], -4.f, 0);   // < 0: multiplied
  CHECK_NEAR(l[2], 1.f, 0);    // not in the context
  CHECK_NEAR(l[3], 0.5f, 0);
  CHECK_NEAR(l[4], 0.f, 0);
  // Greedy honours the penalty: token 0 wins before, token 2 after (ties -> first index).
  std::vector<float> l2 = {2.f, -2.f, 1.5f};
  GenerationConfig g;
  g.top_k = 1;
  g.repetition_penalty = 2.f;
  std::mt19937_64 rng(0);
  CHECK_EQ(sample(l2.data(), 3, g, {0}, rng).token, 2);
}

TEST(presence_frequency_openai_semantics) {
  std::vector<float> l = {1.f, 1.f, 1.f, 1.f, 1.f};
  std::vector<int32_t> gen = {2, 2, 2, 4, 9};  // 9 is out of the vocabulary: ignored
  apply_presence_frequency(l.data(), 5, gen.data(), (int)gen.size(), 0.5f, 0.25f);
  CHECK_NEAR(l[0], 1.f, 0);
  CHECK_NEAR(l[2], 1.f - 0.5f - 3 * 0.25f, 1e-6);
  CHECK_NEAR(l[4], 1.f - 0.5f - 0.25f, 1e-6);
  // only the generated part counts: the prompt's tokens (before prompt_len) are not penalized
  GenerationConfig g;
  g.top_k = 1;
  g.presence_penalty = 2.f;
  std::mt19937_64 rng(1);
  std::vector<float> row = {3.f, 2.5f, 0.f};
  auto r1 = row;
  CHECK_EQ(sample(r1.data(), 3, g, {0, 1}, rng, 2).token, 0);  // 0 is in the prompt only
  auto r2 = row;
  CHECK_EQ(sample(r2.data(), 3, g, {1, 0}, rng, 1).token, 1);  // 0 was generated: 3 - 2 < 2.5
}

TEST(logit_bias_shifts_and_bans) {
  std::vector<float> l = {1.f, 2.f, 3.f};
  apply_logit_bias(l.data(), 3, {{0, 5.f}, {2, -100.f}, {7, 1.f}});
  CHECK_NEAR(l[0], 6.f, 0);
  CHECK_NEAR(l[1], 2.f, 0);
  CHECK(std::isinf(l[2]) && l[2] < 0);
  GenerationConfig g;
  g.top_k = 0;
  g.logit_bias = {{2, -100.f}};
  std::mt19937_64 rng(2);
  for (int i = 0; i < 200; ++i) {
    std::vector<float> row = {0.f, 0.f, 20.f};
    CHECK(sample(row.data(), 3, g, {}, rng).token != 2);  // banned, though it would win
  }
}

TEST(temperature_scales) {
  std::vector<float> l = {1.f, -2.f, 4.f};
  apply_temperature(l.data(), 3, 0.5f);
  CHECK_NEAR(l[0], 2.f, 1e-6);
  CHECK_NEAR(l[1], -4.f, 1e-6);
  CHECK_NEAR(l[2], 8.f, 1e-6);
}

TEST(top_k_mask_and_renormalize) {
  auto l = logits_of({0.1, 0.4, 0.3, 0.2});
  auto c = top_k_top_p(l.data(), 4, 2, 1.f);
  CHECK_EQ(c.size(), (size_t)2);
  CHECK_EQ(c[0].first, 1);
  CHECK_EQ(c[1].first, 2);
  CHECK_NEAR(c[0].second, 0.4 / 0.7, 1e-6);
  CHECK_NEAR(c[1].second, 0.3 / 0.7, 1e-6);
  // ties keep the lower id first
  std::vector<float> t = {1.f, 3.f, 2.f, 3.f};
  auto ct = top_k_top_p(t.data(), 4, 2, 1.f);
  CHECK_EQ(ct[0].first, 1);
  CHECK_EQ(ct[1].first, 3);
  // top_k 0 or >= vocab: everything
  CHECK_EQ(top_k_top_p(l.data(), 4, 0, 1.f).size(), (size_t)4);
  CHECK_EQ(top_k_top_p(l.data(), 4, 9, 1.f).size(), (size_t)4);
}

TEST(top_p_smallest_set_reaching_p) {
  auto l = logits_of({0.1, 0.4, 0.3, 0.2});
  auto c = top_k_top_p(l.data(), 4, 0, 0.5f);  // 0.4 < 0.5 -> add 0.3 -> 0.7 >= 0.5
  CHECK_EQ(c.size(), (size_t)2);
  CHECK_EQ(c[0].first, 1);
  CHECK_EQ(c[1].first, 2);
  CHECK_NEAR(c[0].second, 4.0 / 7.0, 1e-6);
  c = top_k_top_p(l.data(), 4, 0, 0.75f);  // 0.4, 0.7 < 0.75 -> 0.9: three tokens
  CHECK_EQ(c.size(), (size_t)3);
  CHECK_EQ(c[2].first, 3);
  c = top_k_top_p(l.data(), 4, 0, 0.f);  // at least one token
  CHECK_EQ(c.size(), (size_t)1);
  CHECK_EQ(c[0].first, 1);
  CHECK_NEAR(c[0].second, 1.0, 1e-6);
  // top-k first, then top-p over the renormalized top-k: {0.4, 0.3, 0.2}/0.9 -> 0.444, 0.778 >= 0.7
  c = top_k_top_p(l.data(), 4, 3, 0.7f);
  CHECK_EQ(c.size(), (size_t)2);
  // A big flat vocabulary: the kept set is past the first sorted prefix (64), so it grows.
  std::vector<float> flat(1000, 0.f);
  c = top_k_top_p(flat.data(), 1000, 0, 0.3004f);  // keep i while i * 0.001 < 0.3004
  CHECK_EQ(c.size(), (size_t)301);
  for (size_t i = 0; i < c.size(); ++i) CHECK_EQ(c[i].first, (int32_t)i);
}

TEST(log_softmax_hand_computed) {
  std::vector<float> l = {0.f, (float)std::log(3.0)};
  CHECK_NEAR(log_softmax_at(l.data(), 2, 1), std::log(0.75), 1e-6);
  CHECK_NEAR(log_softmax_at(l.data(), 2, 0), std::log(0.25), 1e-6);
}

TEST(logprob_is_of_the_raw_distribution_whatever_the_settings) {
  std::vector<float> raw = {1.f, 2.f, 3.f};
  GenerationConfig g;
  g.top_k = 1;
  g.logprobs = true;
  std::mt19937_64 rng(1);
  auto l = raw;
  auto r = sample(l.data(), 3, g, {}, rng);  // greedy
  CHECK_EQ(r.token, 2);
  CHECK_NEAR(r.logprob, log_softmax_at(raw.data(), 3, 2), 1e-6);
  CHECK(r.top.empty());
  // temperature, truncation, penalties and bias change the draw, never the reported logprob
  g.top_k = 2;
  g.temperature = 2.f;
  g.repetition_penalty = 1.5f;
  g.logit_bias = {{0, 5.f}};
  g.top_logprobs = 3;
  for (int i = 0; i < 20; ++i) {
    l = raw;
    r = sample(l.data(), 3, g, {2}, rng);
    CHECK(r.token >= 0 && r.token < 3);
    CHECK_NEAR(r.logprob, log_softmax_at(raw.data(), 3, r.token), 1e-6);
    CHECK_EQ(r.top.size(), 3u);
    for (int k = 0; k < 3; ++k) {  // most probable first: 2, 1, 0
      CHECK_EQ(r.top[k].first, 2 - k);
      CHECK_NEAR(r.top[k].second, log_softmax_at(raw.data(), 3, 2 - k), 1e-6);
    }
  }
  g.logprobs = false;
  l = raw;
  CHECK_NEAR(sample(l.data(), 3, g, {}, rng).logprob, 0.0, 0);
  CHECK(sample(l.data(), 3, g, {}, rng).top.empty());
}

TEST(token_mask_leaves_only_allowed_tokens) {
  std::vector<float> row(70, 1.f);
  row[65] = 50.f;  // would win without the mask
  std::vector<uint32_t> allowed(3, 0u);
  allowed[0] = 1u << 3;
  allowed[1] = 1u << 31;  // token 63
  apply_token_mask(row.data(), 70, allowed.data());
  for (int t = 0; t < 70; ++t) CHECK(t == 3 || t == 63 ? row[t] == 1.f : std::isinf(row[t]) && row[t] < 0);
  GenerationConfig g;
  g.top_k = 0;
  g.logprobs = true;
  std::mt19937_64 rng(9);
  std::vector<float> raw(70, 0.f);
  raw[65] = 50.f;
  for (int i = 0; i < 50; ++i) {
    auto l = raw;
    auto r = sample(l.data(), 70, g, {}, rng, -1, allowed.data());
    CHECK(r.token == 3 || r.token == 63);
    CHECK(r.logprob < -40.f);  // the raw model's logprob: the mask does not change it
  }
}

TEST(top_k_desc_matches_a_stable_sort) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const int vocab = 1 + (int)(rng() % 300);
    std::vector<float> row(vocab);
    for (float& x : row) x = (float)(rng() % 17) - 8.f;  // many ties
    if (trial % 7 == 0) row[rng() % vocab] = std::numeric_limits<float>::quiet_NaN();
    const int k = 1 + (int)(rng() % 20);
    std::vector<int32_t> ids(k);
    std::vector<float> vals(k);
    top_k_desc(row.data(), vocab, k, ids.data(), vals.data());
    std::vector<int32_t> ref(vocab);
    for (int i = 0; i < vocab; ++i) ref[i] = i;
    auto key = [&](int32_t i) { return std::isnan(row[i]) ? -std::numeric_limits<float>::infinity() : row[i]; };
    std::stable_sort(ref.begin(), ref.end(), [&](int32_t a, int32_t b) {
      if (std::isnan(row[a]) != std::isnan(row[b])) return !std::isnan(row[a]);  // NaN last
      return key(a) > key(b);
    });
    for (int i = 0; i < std::min(k, vocab); ++i) CHECK_EQ(ids[i], ref[i]);
  }
}

TEST(token_logprob_top_entries_are_log_softmax) {
  std::vector<float> row = {0.f, (float)std::log(3.0), -1.f, (float)std::log(3.0)};
  TokenLogprob t = token_logprob(row.data(), 4, 2, 2);
  double z = 1 + 3 + std::exp(-1.0) + 3;
  CHECK_NEAR(t.logprob, -1.0 - std::log(z), 1e-6);
  CHECK_EQ(t.top.size(), 2u);
  CHECK_EQ(t.top[0].first, 1);  // tie between 1 and 3: the lower id first
  CHECK_EQ(t.top[1].first, 3);
  CHECK_NEAR(t.top[0].second, std::log(3.0 / z), 1e-6);
}

TEST(degenerate_rows_still_give_a_valid_token) {
  GenerationConfig g;
  g.top_k = 0;
  g.logprobs = true;
  std::mt19937_64 rng(3);
  std::vector<float> nan_row(50, std::numeric_limits<float>::quiet_NaN());
  for (int i = 0; i < 20; ++i) {
    auto l = nan_row;
    int32_t t = sample(l.data(), 50, g, {}, rng).token;
    CHECK(t >= 0 && t < 50);
  }
  std::vector<float> row = {1.f, 3.f, 2.f, -1e30f};
  g.temperature = 1e-20f;  // 1/T overflows: greedy
  for (int i = 0; i < 20; ++i) {
    auto l = row;
    CHECK_EQ(sample(l.data(), 4, g, {}, rng).token, 1);
  }
}

TEST(whole_vocab_draw_never_picks_an_impossible_token) {
  GenerationConfig g;
  g.top_k = 0;
  std::vector<float> row(1000, -std::numeric_limits<float>::infinity());
  row[3] = 0.f;
  row[997] = 0.f;
  std::mt19937_64 rng(5);
  std::map<int, int> n;
  for (int i = 0; i < 2000; ++i) {
    auto l = row;
    n[sample(l.data(), 1000, g, {}, rng).token]++;
  }
  CHECK_EQ(n[3] + n[997], 2000);
  CHECK_NEAR(n[3] / 2000.0, 0.5, 0.05);
}

static std::vector<int32_t> draw(uint64_t seed, int n, const GenerationConfig& g, const std::vector<float>& row) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    auto l = row;
    out.push_back(sample(l.data(), (int)l.size(), g, {}, rng).token);
  }
  return out;
}

TEST(seeded_sampling_reproduces) {
  GenerationConfig g;
  g.top_k = 0;
  g.top_p = 0.95f;
  g.temperature = 0.8f;
  std::vector<float> row(200);
  for (int i = 0; i < 200; ++i) row[i] = (float)std::sin(i * 0.37) * 3.f;
  auto a = draw(42, 100, g, row), b = draw(42, 100, g, row), c = draw(43, 100, g, row);
  CHECK(a == b);
  CHECK(a != c);
  // the draw does not depend on std:: distributions: pin the first value of seed 42
  std::mt19937_64 rng(42);
  CHECK_NEAR(uniform01(rng), 6801836353641660.0 / 9007199254740992.0, 0);  // mt19937_64 is standardized
}

TEST(sampled_frequencies_match_probabilities) {
  GenerationConfig g;
  g.top_k = 0;
  auto row = logits_of({0.1, 0.4, 0.3, 0.2});
  auto t = draw(7, 20000, g, row);
  std::map<int, int> n;
  for (int x : t) n[x]++;
  CHECK_NEAR(n[0] / 20000.0, 0.1, 0.015);
  CHECK_NEAR(n[1] / 20000.0, 0.4, 0.015);
  CHECK_NEAR(n[2] / 20000.0, 0.3, 0.015);
  CHECK_NEAR(n[3] / 20000.0, 0.2, 0.015);
  g.top_k = 2;  // only ids 1 and 2, as 4:3
  t = draw(7, 20000, g, row);
  n.clear();
  for (int x : t) n[x]++;
  CHECK_EQ(n[0] + n[3], 0);
  CHECK_NEAR(n[1] / 20000.0, 4.0 / 7.0, 0.015);
}

TEST(stop_sequences_match_whole) {
  std::vector<std::vector<int32_t>> stops = {{5, 6, 7}, {9}};
  std::vector<int32_t> g1 = {1, 5, 6};
  CHECK_EQ(stop_match(g1.data(), 3, stops), 0);  // a partial match does not stop
  CHECK_EQ(stop_holdback(g1.data(), 3, stops), 2);  // ... but is held back from the stream
  std::vector<int32_t> g2 = {1, 5, 6, 7};
  CHECK_EQ(stop_match(g2.data(), 4, stops), 3);
  std::vector<int32_t> g3 = {5, 6, 8};
  CHECK_EQ(stop_match(g3.data(), 3, stops), 0);
  CHECK_EQ(stop_holdback(g3.data(), 3, stops), 0);
  std::vector<int32_t> g4 = {7};  // only the last token of a stop sequence: no stop
  CHECK_EQ(stop_match(g4.data(), 1, stops), 0);
  std::vector<int32_t> g5 = {3, 9};
  CHECK_EQ(stop_match(g5.data(), 2, stops), 1);
  std::vector<int32_t> g6 = {5, 5};  // tail 5 is a prefix again
  CHECK_EQ(stop_holdback(g6.data(), 2, stops), 1);
  // longest match wins when two stop sequences end the same way
  std::vector<std::vector<int32_t>> s2 = {{7}, {6, 7}};
  CHECK_EQ(stop_match(g2.data(), 4, s2), 2);
  CHECK_EQ(stop_match(g2.data(), 4, {}), 0);
}

int main() { return check::run_all(); }
