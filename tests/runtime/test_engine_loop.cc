// The whole Engine (engine thread, queue, scheduler, sampler, streams) over a fake model whose
// next token is a hash of the context it READS BACK FROM ITS KV BLOCKS. A wrong block table, a
// stale block after eviction or preemption, or a wrong start_pos changes the tokens, so comparing
// with a reference computed from the plain token list tests the K/V bookkeeping end to end.
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <set>
#include <thread>

#include "check.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/model_backend.h"
#include "engine/token_mask.h"

using namespace turbolm;

namespace {

constexpr int kVocab = 101, kBlock = 4, kEos = 2;

int32_t next_of(const std::vector<int32_t>& ctx) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < ctx.size(); ++i) h = (h ^ (uint64_t)(ctx[i] + 7 * i)) * 1099511628211ull;
  int32_t t = (int32_t)(h % kVocab);
  return t == kEos ? 3 : t;  // eos only where a test asks for it (see kEosAfter)
}

class FakeModel : public ModelBackend {
 public:
  explicit FakeModel(ModelConfig c) : cfg_(c) {}
  const ModelConfig& config() const override { return cfg_; }
  size_t kv_bytes_per_block() const override { return 1 << 20; }
  void allocate_kv(int n) override { kv_.assign((size_t)n * kBlock, -1); }
  void forward(const std::vector<ForwardItem>& batch, float* logits) override {
    ++forwards;
    if (delay_us) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    if (fail_next.exchange(false)) fail("fake forward failure");
    // Blocks a step writes belong to one item only; blocks it only reads (a shared prefix) may
    // be read by several.
    std::set<int32_t> written, read;
    for (const ForwardItem& it : batch) {
      int nblocks = (it.start_pos + it.n_tokens + kBlock - 1) / kBlock;
      for (int b = 0; b < nblocks; ++b) {
        int32_t id = it.block_table[b];
        TURBOLM_CHECK(id >= 0 && (size_t)id * kBlock < kv_.size(), "fake: block id out of range");
        if (b >= it.start_pos / kBlock) TURBOLM_CHECK(written.insert(id).second, "fake: block ", id, " written twice");
        else read.insert(id);
      }
      for (int i = 0; i < it.n_tokens; ++i) kv_[slot(it, it.start_pos + i)] = it.tokens[i];
    }
    for (int32_t id : read) TURBOLM_CHECK(!written.count(id), "fake: block ", id, " read while another item writes it");
    for (const ForwardItem& it : batch) {
      int first = it.logits == LogitsMode::kAll ? 0 : it.n_tokens - 1;
      if (it.logits == LogitsMode::kNone) continue;
      for (int i = first; i < it.n_tokens; ++i) {
        int p = it.start_pos + i;
        std::vector<int32_t> ctx;
        for (int q = 0; q <= p; ++q) ctx.push_back(kv_[slot(it, q)]);
        write_row(ctx, logits);
        logits += kVocab;
      }
    }
  }
  // logits: 0 everywhere, 5 at the next token, 4 at the one after it
  static void write_row(const std::vector<int32_t>& ctx, float* row) {
    for (int v = 0; v < kVocab; ++v) row[v] = 0.f;
    int32_t t = ctx.size() >= 3 && ctx[ctx.size() - 1] == 77 ? kEos : next_of(ctx);  // 77 -> eos next
    row[t] = 5.f;
    row[(t + 1) % kVocab] = 4.f;
  }
  std::atomic<int> forwards{0};
  std::atomic<bool> fail_next{false};
  int delay_us = 0;

 private:
  size_t slot(const ForwardItem& it, int p) const { return (size_t)it.block_table[p / kBlock] * kBlock + p % kBlock; }
  ModelConfig cfg_;
  std::vector<int32_t> kv_;
};

ModelConfig fake_config() {
  ModelConfig c;
  c.vocab_size = kVocab;
  c.cache_block_seq_len = kBlock;
  c.session_len = 48;
  c.max_batch_size = 8;
  c.max_context_token_num = 16;
  c.cache_max_entry_count = 12;  // 12 blocks: exactly one full session -> heavy eviction/preemption
  c.end_id = kEos;
  return c;
}

struct Fixture {
  FakeModel* model;
  std::unique_ptr<Engine> engine;
  explicit Fixture(ModelConfig c = fake_config(), int delay_us = 0) {
    auto m = std::make_unique<FakeModel>(c);
    m->delay_us = delay_us;
    model = m.get();
    engine = std::make_unique<Engine>(std::move(m), EngineOptions());
  }
};

// Greedy reference: what the engine must stream for `history` (all previous tokens + prompt).
std::vector<int32_t> reference(std::vector<int32_t> history, int max_new, int session_len = 48) {
  std::vector<int32_t> out;
  float row[kVocab];
  while ((int)out.size() < max_new && (int)history.size() < session_len) {
    FakeModel::write_row(history, row);
    int32_t t = 0;
    for (int v = 1; v < kVocab; ++v)
      if (row[v] > row[t]) t = v;
    if (t == kEos) break;
    history.push_back(t);
    out.push_back(t);
  }
  return out;
}

Request req(uint64_t id, std::vector<int32_t> ids, int max_new, bool start = true, bool end = true, int step = -1) {
  Request r;
  r.session_id = id;
  r.input_ids = std::move(ids);
  r.sequence_start = start;
  r.sequence_end = end;
  r.step = step;
  r.gen.max_new_tokens = max_new;
  return r;
}

Output wait(const std::shared_ptr<Stream>& s) {
  Output o;
  size_t seen = 0;
  while (true) {
    s->wait(seen, o, 10000);
    if (o.finish != FinishReason::kNone) return o;
    seen = o.token_ids.size();
  }
}

std::vector<int32_t> prompt(int n, int seed) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(10 + (seed * 13 + i * 7) % 60);
  return p;
}

}  // namespace

TEST(greedy_matches_reference) {
  Fixture f;
  auto p = prompt(9, 1);
  Output o = wait(f.engine->submit(req(1, p, 20)));
  CHECK(o.finish == FinishReason::kLength);
  CHECK(o.token_ids == reference(p, 20));
  Engine::Stats st = f.engine->stats();
  CHECK_EQ(st.num_blocks, 12);
  CHECK_EQ(st.max_num_tokens, 16);
}

TEST(concurrent_requests_with_preemption_match_reference) {
  Fixture f;
  std::vector<std::shared_ptr<Stream>> streams;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 12; ++i) {
    prompts.push_back(prompt(3 + (i * 5) % 17, i));
    streams.push_back(f.engine->submit(req(100 + i, prompts.back(), 8 + i % 5)));
  }
  for (int i = 0; i < 12; ++i) {
    Output o = wait(streams[i]);
    auto expect = reference(prompts[i], 8 + i % 5);
    CHECK(o.token_ids == expect);  // shorter when the model said eos
    CHECK(o.finish == ((int)expect.size() < 8 + i % 5 ? FinishReason::kStop : FinishReason::kLength));
  }
  Engine::Stats st = f.engine->stats();
  CHECK(st.preemptions > 0);  // 12 blocks for 12 sequences of up to 32 tokens
  CHECK_EQ(st.free_blocks + st.pooled_blocks, 12);  // pooled: findable by their tokens, held by nobody
  CHECK_EQ(st.running + st.waiting, 0);
}

TEST(multi_round_sessions_survive_eviction) {
  Fixture f;
  std::vector<int32_t> hist[3];
  for (int round = 0; round < 3; ++round) {
    std::vector<std::shared_ptr<Stream>> ss;
    std::vector<std::vector<int32_t>> expect;
    for (int s = 0; s < 3; ++s) {
      auto p = prompt(4, round * 3 + s);
      hist[s].insert(hist[s].end(), p.begin(), p.end());
      expect.push_back(reference(hist[s], 4));
      ss.push_back(f.engine->submit(req(s, p, 4, round == 0, false)));
    }
    for (int s = 0; s < 3; ++s) {
      Output o = wait(ss[s]);
      CHECK(o.token_ids == expect[s]);
      hist[s].insert(hist[s].end(), o.token_ids.begin(), o.token_ids.end());
    }
  }
  // rewind session 0 to its first 6 tokens and continue
  std::vector<int32_t> h0(hist[0].begin(), hist[0].begin() + 6);
  h0.push_back(33);
  Output o = wait(f.engine->submit(req(0, {33}, 5, false, true, 6)));
  CHECK(o.token_ids == reference(h0, 5));
  for (int s = 1; s < 3; ++s) f.engine->end(s);
  for (int i = 0; i < 100 && f.engine->stats().free_blocks + f.engine->stats().pooled_blocks != 12; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK_EQ(f.engine->stats().free_blocks + f.engine->stats().pooled_blocks, 12);
}

TEST(eos_stops_and_is_not_streamed) {
  Fixture f;
  std::vector<int32_t> q = {11, 12, 77};  // the fake model answers 77 with eos
  Output o = wait(f.engine->submit(req(1, q, 10)));
  CHECK(o.finish == FinishReason::kStop);
  CHECK(o.token_ids.empty());
  Request r = req(2, q, 3);
  r.gen.ignore_eos = true;
  o = wait(f.engine->submit(r));
  CHECK(o.finish == FinishReason::kLength);
  CHECK_EQ(o.token_ids.size(), (size_t)3);
  CHECK_EQ(o.token_ids[0], kEos);
}

TEST(seeded_sampling_reproduces_through_engine) {
  Fixture f;
  auto run = [&](uint64_t id, uint64_t seed) {
    Request r = req(id, prompt(6, 2), 12);
    r.gen.top_k = 0;
    r.gen.temperature = 1.5f;
    r.gen.random_seed = seed;
    r.gen.logprobs = true;
    return wait(f.engine->submit(r));
  };
  Output a = run(1, 5), b = run(2, 5), c = run(3, 6);
  CHECK(a.token_ids == b.token_ids);
  CHECK(a.logprobs == b.logprobs);
  CHECK(a.token_ids != c.token_ids);
  CHECK_EQ(a.logprobs.size(), a.token_ids.size());
  for (const TokenLogprob& lp : a.logprobs) CHECK(lp.logprob < 0.f && std::isfinite(lp.logprob));
}

// Prefix caching: requests whose prompts share their first blocks reuse them (the fake model
// reads every position back from the blocks, so a wrong or stale shared block changes the tokens),
// concurrently and one after another, with the pool too small for all of them at once.
TEST(prefix_cache_reuses_shared_prompts_exactly) {
  Fixture f;
  std::vector<int32_t> prefix = prompt(13, 5);  // 3 full blocks of 4 and one token
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) {
    auto p = prefix;
    auto tail = prompt(1 + i % 3, 20 + i);
    p.insert(p.end(), tail.begin(), tail.end());
    prompts.push_back(p);
  }
  Output first = wait(f.engine->submit(req(100, prompts[0], 6)));
  CHECK(first.token_ids == reference(prompts[0], 6));
  CHECK_EQ(first.cached_tokens, 0);
  Output again = wait(f.engine->submit(req(101, prompts[0], 6)));
  CHECK(again.token_ids == first.token_ids);
  CHECK_EQ(again.cached_tokens, 12);  // 3 full blocks; the rest computed
  std::vector<std::shared_ptr<Stream>> ss;
  for (int i = 1; i < 8; ++i) ss.push_back(f.engine->submit(req(200 + i, prompts[i], 8)));
  for (int i = 1; i < 8; ++i) {
    Output o = wait(ss[i - 1]);
    CHECK(o.token_ids == reference(prompts[i], 8));
    CHECK(o.cached_tokens == 0 || o.cached_tokens == 12);
  }
  Engine::Stats st = f.engine->stats();
  CHECK(st.prefix_cached_tokens >= 12 * 2);
  CHECK_EQ(st.free_blocks + st.pooled_blocks, 12);
}

// Structured output: a worker thread plays the grammar engine. Its "grammar" allows exactly one
// token after each token t -- (t * 7 + 1) % kVocab, never eos -- so every sampled token must be
// the one the mask allowed, whatever the model prefers, while an unconstrained request in the
// same batch samples freely. Each job carries the token just sampled.
TEST(token_mask_constrains_sampling_and_workers_see_each_token) {
  Fixture f;
  auto queue = std::make_shared<MaskQueue>();
  auto allow_only = [](TokenMask& m, int32_t t) {
    std::fill(m.buffer(), m.buffer() + m.words(), 0u);
    m.buffer()[t / 32] |= 1u << (t % 32);
  };
  std::vector<int32_t> seen;
  std::atomic<int> n_seen{0};
  std::thread worker([&] {
    MaskQueue::Job job;
    while (queue->pop(job, -1)) {
      seen.push_back(job.token);
      ++n_seen;
      allow_only(*job.mask, (job.token * 7 + 1) % kVocab);
      job.mask->publish();
    }
  });
  auto mask = std::make_shared<TokenMask>(kVocab, queue, 42);
  allow_only(*mask, 5);  // the first token
  mask->publish();
  Request r = req(1, prompt(6, 1), 10);
  r.gen.top_k = 0;
  r.gen.temperature = 1.f;
  r.gen.token_mask = mask;
  Request free_req = req(2, prompt(9, 3), 10);
  auto s1 = f.engine->submit(r);
  auto s2 = f.engine->submit(free_req);
  Output a = wait(s1), b = wait(s2);
  CHECK(a.finish == FinishReason::kLength);
  CHECK_EQ(a.token_ids.size(), (size_t)10);
  int32_t want = 5;
  for (int32_t t : a.token_ids) {
    CHECK_EQ(t, want);
    want = (t * 7 + 1) % kVocab;
  }
  CHECK(b.token_ids == reference(prompt(9, 3), 10));  // greedy, unconstrained
  // the job of the last token is pushed as its step ends: let the worker take it first
  for (int i = 0; i < 1000 && n_seen < 10; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // a closed queue fails the next mask: the request ends with an error, the engine goes on
  queue->close();
  worker.join();
  CHECK_EQ(seen.size(), (size_t)10);  // one job per sampled token
  for (size_t i = 0; i < seen.size(); ++i) CHECK_EQ(seen[i], a.token_ids[i]);
  auto mask2 = std::make_shared<TokenMask>(kVocab, queue, 43);
  allow_only(*mask2, 5);
  mask2->publish();
  Request r2 = req(3, prompt(6, 1), 10);
  r2.gen.token_mask = mask2;
  Output c = wait(f.engine->submit(r2));
  CHECK(c.finish == FinishReason::kError);
  CHECK(c.error.find("structured output") != std::string::npos);
  CHECK_EQ(c.token_ids.size(), (size_t)1);  // the first mask was published; the second never came
  CHECK(wait(f.engine->submit(req(4, prompt(5, 2), 3))).finish == FinishReason::kLength);
}

TEST(get_ppl_matches_hand_computation_under_load) {
  Fixture f;
  std::vector<std::vector<int32_t>> seqs = {prompt(40, 1), prompt(7, 2)};
  auto expect = [&](const std::vector<int32_t>& s) {
    double nll = 0;
    float row[kVocab];
    for (size_t p = 0; p + 1 < s.size(); ++p) {
      FakeModel::write_row(std::vector<int32_t>(s.begin(), s.begin() + p + 1), row);
      double z = 0;
      for (float x : row) z += std::exp((double)x);
      nll += std::log(z) - row[s[p + 1]];
    }
    return std::exp(nll / (s.size() - 1));
  };
  // requests running while get_ppl needs most of the pool: it preempts, they recompute
  std::vector<std::shared_ptr<Stream>> ss;
  for (int i = 0; i < 4; ++i) ss.push_back(f.engine->submit(req(i, prompt(10, i), 10)));
  std::vector<double> ppl = f.engine->get_ppl(seqs);
  CHECK_EQ(ppl.size(), (size_t)2);
  CHECK_NEAR(ppl[0], expect(seqs[0]), 1e-6 * ppl[0]);
  CHECK_NEAR(ppl[1], expect(seqs[1]), 1e-6 * ppl[1]);
  for (int i = 0; i < 4; ++i) CHECK(wait(ss[i]).token_ids == reference(prompt(10, i), 10));
  CHECK_THROWS(f.engine->get_ppl({{5}}));
  CHECK_THROWS(f.engine->get_ppl({{5, 500}}));
  CHECK_THROWS(f.engine->get_ppl({prompt(49, 0)}));
}

TEST(invalid_requests_finish_at_once) {
  Fixture f;
  Output o = wait(f.engine->submit(req(1, {5, kVocab}, 3)));
  CHECK(o.finish == FinishReason::kError);
  CHECK(o.error.find("input_ids[1]") != std::string::npos);
  o = wait(f.engine->submit(req(1, {-1}, 3)));
  CHECK(o.finish == FinishReason::kError);
  o = wait(f.engine->submit(req(1, {5}, -1)));
  CHECK(o.finish == FinishReason::kError);
  CHECK(o.error.find("max_new_tokens") != std::string::npos);
  o = wait(f.engine->submit(req(1, {}, 3)));
  CHECK(o.finish == FinishReason::kError);
  CHECK(o.error.find("empty") != std::string::npos);
  o = wait(f.engine->submit(req(1, prompt(49, 0), 3)));
  CHECK(o.finish == FinishReason::kError);
  CHECK(o.error.find("session_len") != std::string::npos);
  Request r = req(1, {5}, 3);
  r.gen.stop_sequences = {{}};
  CHECK(wait(f.engine->submit(r)).finish == FinishReason::kError);
}

TEST(stop_cancels_a_running_request) {
  ModelConfig c = fake_config();
  c.session_len = 4000;
  c.cache_max_entry_count = 1000;
  Fixture f(c, 200);
  auto s = f.engine->submit(req(9, prompt(5, 1), 3000, true, false));
  Output o;
  s->wait(2, o, 10000);  // a few tokens out
  f.engine->stop(9);
  o = wait(s);
  CHECK(o.finish == FinishReason::kCancelled);
  CHECK(o.token_ids.size() < 3000);
  // the session kept its history: continuing it generates what the reference says
  std::vector<int32_t> hist = prompt(5, 1);
  hist.insert(hist.end(), o.token_ids.begin(), o.token_ids.end());
  hist.push_back(20);
  Output o2 = wait(f.engine->submit(req(9, {20}, 4, false, true)));
  CHECK(o2.token_ids == reference(hist, 4, 4000));
}

TEST(forward_failure_finishes_batch_with_error_and_engine_continues) {
  Fixture f;
  f.model->fail_next = true;
  Output o = wait(f.engine->submit(req(1, prompt(5, 1), 4)));
  CHECK(o.finish == FinishReason::kError);
  CHECK(o.error.find("fake forward failure") != std::string::npos);
  o = wait(f.engine->submit(req(1, prompt(5, 1), 4)));
  CHECK(o.token_ids == reference(prompt(5, 1), 4));
}

TEST(busy_session_refused_and_destructor_cancels) {
  ModelConfig c = fake_config();
  c.session_len = 4000;
  c.cache_max_entry_count = 1000;
  std::shared_ptr<Stream> a, b;
  {
    Fixture f(c, 200);
    a = f.engine->submit(req(1, prompt(5, 1), 3000));
    b = f.engine->submit(req(1, prompt(5, 2), 10));
    Output o = wait(b);
    CHECK(o.finish == FinishReason::kError);
    CHECK(o.error.find("busy") != std::string::npos);
    a->wait(1, o, 10000);
  }  // engine destroyed with `a` running
  Output o = wait(a);
  CHECK(o.finish == FinishReason::kCancelled);
}

TEST(idle_engine_does_not_spin) {
  Fixture f;
  wait(f.engine->submit(req(1, prompt(5, 1), 2)));
  int before = f.model->forwards;
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_EQ(f.model->forwards.load(), before);
  CHECK_EQ(f.engine->stats().steps, (long long)before);
}

int main() { return check::run_all(); }
