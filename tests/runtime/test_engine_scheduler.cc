// Scheduler without a model: made-up sampled tokens drive it. Every step checks the invariants
// of the scheduler and the block manager.
#include <functional>
#include <random>

#include "check.h"
#include "engine/scheduler.h"

using namespace turbolm;

namespace {

struct Item {  // a ScheduledSeq recorded before postprocess (which may destroy the Sequence)
  uint64_t id;
  int start, n;
  bool sample;
};

struct Harness {
  BlockManager bm;
  Scheduler s;
  int next_token = 100;  // sampled tokens: 100, 101, ... (never the eos 2)
  Harness(int num_blocks, int block_len, int max_batch, int max_tokens, int session_len, bool prefix_caching = false)
      : bm(num_blocks, block_len, prefix_caching), s(SchedulerConfig{max_batch, max_tokens, session_len, 2}, bm) {}

  std::shared_ptr<Stream> add(uint64_t id, std::vector<int32_t> ids, int max_new, bool start = true, bool end = true,
                              int step = -1, GenerationConfig g = {}) {
    Request r;
    r.session_id = id;
    r.input_ids = std::move(ids);
    r.sequence_start = start;
    r.sequence_end = end;
    r.step = step;
    r.gen = g;
    r.gen.max_new_tokens = max_new;
    auto st = std::make_shared<Stream>();
    s.add(r, st);
    ok();
    return st;
  }
  void ok() {
    try {
      s.check_invariants();
    } catch (const std::exception& e) {
      std::printf("  invariant: %s\n", e.what());
      CHECK(false);
    }
  }
  // One step; `pick` chooses the sampled token of a sequence (default: a counter).
  std::vector<Item> step(std::function<int32_t(const Sequence&)> pick = nullptr) {
    auto batch = s.schedule();
    ok();
    std::vector<Item> rec;
    std::vector<int32_t> toks;
    std::vector<TokenLogprob> lps;
    int total = 0;
    for (auto& b : batch) {
      rec.push_back({b.seq->session_id, b.seq->num_cached, b.n_tokens, b.sample});
      CHECK(b.n_tokens >= 1);
      CHECK((int)b.seq->block_table.size() * bm.block_len() >= b.seq->num_cached + b.n_tokens);  // blocks cover
      total += b.n_tokens;
      if (b.sample) {
        toks.push_back(pick ? pick(*b.seq) : next_token++);
        lps.push_back({-1.f, {}});
      }
    }
    CHECK(total <= s.config().max_num_tokens);
    CHECK((int)batch.size() <= s.config().max_batch_size);
    s.postprocess(batch, toks, lps);
    ok();
    return rec;
  }
  void run_until_idle(int max_steps = 1000) {
    while (s.has_work() && max_steps-- > 0) step();
    CHECK(!s.has_work());
  }
};

std::vector<int32_t> iota(int n, int from = 10) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = from + i;
  return v;
}

Output out_of(const std::shared_ptr<Stream>& st) {
  Output o;
  st->wait(0, o, 0);
  return o;
}

const Item* find(const std::vector<Item>& v, uint64_t id) {
  for (auto& i : v)
    if (i.id == id) return &i;
  return nullptr;
}

}  // namespace

TEST(chunked_prefill_mixes_with_decodes_within_budget) {
  Harness h(64, 4, 4, 8, 256);
  auto a = h.add(1, iota(3), 10);
  auto s1 = h.step();
  CHECK_EQ(s1.size(), (size_t)1);
  CHECK(s1[0].n == 3 && s1[0].sample);
  auto b = h.add(2, iota(20), 2);
  auto s2 = h.step();  // a decodes 1, b gets the rest of the budget: 7
  CHECK_EQ(s2.size(), (size_t)2);
  CHECK(find(s2, 1)->n == 1 && find(s2, 1)->sample);
  CHECK(find(s2, 2)->n == 7 && !find(s2, 2)->sample);  // mid-prompt chunk: no logits
  auto s3 = h.step();
  CHECK(find(s3, 2)->start == 7 && find(s3, 2)->n == 7);
  auto s4 = h.step();
  CHECK(find(s4, 2)->start == 14 && find(s4, 2)->n == 6 && find(s4, 2)->sample);
  auto s5 = h.step();  // both decode now
  CHECK(find(s5, 1)->n == 1 && find(s5, 2)->n == 1);
  h.run_until_idle();
  CHECK_EQ(out_of(a).token_ids.size(), (size_t)10);
  CHECK(out_of(b).finish == FinishReason::kLength);
  CHECK_EQ(out_of(b).token_ids.size(), (size_t)2);
  CHECK_EQ(h.bm.num_free(), 64);  // sequence_end freed everything
}

TEST(waiting_prompt_is_admitted_when_budget_is_left) {
  Harness h(64, 4, 4, 8, 256);
  auto a = h.add(1, iota(2), 10);
  h.step();  // a: prefill + first token -> decoding
  auto b = h.add(2, iota(30), 1);
  auto c = h.add(3, iota(2), 10);
  // a decodes every step; b takes the rest of the budget; c (FIFO behind b) waits for budget.
  int expect_b[] = {7, 7, 7, 7, 2};
  for (int i = 0; i < 5; ++i) {
    auto s = h.step();
    CHECK(find(s, 1) && find(s, 1)->n == 1);
    CHECK(find(s, 2) && find(s, 2)->n == expect_b[i]);
    CHECK_EQ((bool)find(s, 3), i == 4);
  }
  auto s = h.step();
  CHECK(find(s, 3) && find(s, 3)->n == 1);  // c: prefill of 2 done last step, decoding now
  h.run_until_idle();
  CHECK(out_of(b).finish == FinishReason::kLength);
  CHECK(out_of(c).finish == FinishReason::kLength);
  CHECK_EQ(out_of(c).token_ids.size(), (size_t)10);
}

TEST(max_batch_size_bounds_running) {
  Harness h(64, 4, 2, 64, 256);
  auto a = h.add(1, iota(3), 3);
  auto b = h.add(2, iota(3), 3);
  auto c = h.add(3, iota(3), 3);
  auto s = h.step();
  CHECK_EQ(s.size(), (size_t)2);
  CHECK(find(s, 3) == nullptr);
  CHECK_EQ(h.s.num_waiting(), 1);
  h.step();
  h.step();  // a and b finish (3 tokens)
  s = h.step();
  CHECK(find(s, 3) != nullptr);
  h.run_until_idle();
  CHECK_EQ(out_of(c).token_ids.size(), (size_t)3);
}

TEST(evicts_idle_sessions_before_preempting) {
  Harness h(8, 4, 4, 64, 32);
  auto a = h.add(1, iota(10), 2, true, /*end=*/false);  // idle session afterwards: 3 blocks cached
  h.run_until_idle();
  CHECK_EQ(h.bm.num_cached(), 3);
  const Sequence* sa = h.s.find(1);
  CHECK(sa && sa->status == SequenceStatus::kCached && sa->num_cached == 11);
  // 24 + 4 tokens need 7 blocks: 5 free + 2 of the idle session's.
  auto b = h.add(2, iota(24), 4);
  h.run_until_idle();
  CHECK_EQ(h.s.num_preemptions(), 0);
  CHECK(out_of(b).finish == FinishReason::kLength);
  sa = h.s.find(1);
  CHECK(sa->block_table.empty() && sa->num_cached == 0 && sa->tokens.size() == 12);  // evicted, history kept
  // Resuming recomputes the whole history from position 0.
  auto a2 = h.add(1, {50, 51}, 1, false, true);
  auto s = h.step();
  CHECK(find(s, 1)->start == 0 && find(s, 1)->n == 14 && find(s, 1)->sample);
  h.run_until_idle();
  CHECK(out_of(a2).finish == FinishReason::kLength);
  CHECK(h.s.find(1) == nullptr);
}

TEST(preempts_latest_running_and_recomputes) {
  // 6 blocks of 4 = 24 tokens; three sequences of 4 prompt + 6 new need 3 blocks each.
  Harness h(6, 4, 4, 64, 24);
  auto a = h.add(1, iota(4), 6);
  auto b = h.add(2, iota(4), 6);
  auto c = h.add(3, iota(4), 6);
  auto s = h.step();  // all three prefill: 3 blocks used
  CHECK_EQ(s.size(), (size_t)3);
  s = h.step();  // all cross into block 2: 6 blocks used
  CHECK_EQ(h.bm.num_free(), 0);
  for (int i = 0; i < 3; ++i) h.step();  // positions 5..7: same blocks
  CHECK_EQ(h.s.num_preemptions(), 0);
  s = h.step();  // position 8 for a: no block left -> c (latest) is preempted; b too
  CHECK(h.s.num_preemptions() >= 1);
  const Sequence* sc = h.s.find(3);
  CHECK(sc->status == SequenceStatus::kWaiting && sc->num_cached == 0 && sc->block_table.empty());
  CHECK(find(s, 1) != nullptr);  // the oldest keeps going
  CHECK(find(s, 3) == nullptr);
  h.run_until_idle();
  for (auto& st : {a, b, c}) {
    Output o = out_of(st);
    CHECK(o.finish == FinishReason::kLength);
    CHECK_EQ(o.token_ids.size(), (size_t)6);
  }
}

TEST(rewind_with_step_truncates_blocks) {
  Harness h(16, 4, 4, 64, 64);
  auto a = h.add(1, iota(8), 3, true, false);  // history 11 tokens, 10 cached (last sampled not computed)
  h.run_until_idle();
  const Sequence* s1 = h.s.find(1);
  CHECK(s1->tokens.size() == 11 && s1->num_cached == 10);
  CHECK_EQ(s1->block_table.size(), (size_t)3);
  auto b = h.add(1, {60, 61}, 1, false, false, /*step=*/6);
  CHECK(s1->tokens.size() == 8 && s1->tokens[5] == 15 && s1->tokens[6] == 60);
  CHECK_EQ(s1->num_cached, 6);
  CHECK_EQ(s1->block_table.size(), (size_t)2);  // blocks past 6 tokens freed
  auto s = h.step();
  CHECK(find(s, 1)->start == 6 && find(s, 1)->n == 2);  // no recompute of the kept 6 tokens
  h.run_until_idle();
  // step beyond the history is refused
  auto c = h.add(1, {1}, 1, false, false, 100);
  CHECK(out_of(c).finish == FinishReason::kError);
}

TEST(continuing_a_session_reuses_its_blocks) {
  Harness h(16, 4, 4, 64, 64);
  auto a = h.add(7, iota(5), 2, true, false);
  h.run_until_idle();
  const Sequence* s = h.s.find(7);
  CHECK(s->tokens.size() == 7 && s->num_cached == 6);
  auto b = h.add(7, {70, 71, 72}, 1, false, true);
  auto st = h.step();
  CHECK(find(st, 7)->start == 6 && find(st, 7)->n == 4);  // last answer token + the new prompt
  h.run_until_idle();
  CHECK(h.s.find(7) == nullptr);
  // continuing an unknown session: refused; ending one: a no-op
  auto c = h.add(8, {1}, 1, false, false);
  CHECK(out_of(c).finish == FinishReason::kError);
  auto d = h.add(8, {}, 0, false, true);
  CHECK(out_of(d).finish == FinishReason::kStop);
}

TEST(busy_session_is_refused) {
  Harness h(16, 4, 4, 64, 64);
  auto a = h.add(1, iota(5), 5);
  auto b = h.add(1, iota(5), 5);
  Output o = out_of(b);
  CHECK(o.finish == FinishReason::kError);
  CHECK(o.error.find("busy") != std::string::npos);
  h.run_until_idle();
  CHECK_EQ(out_of(a).token_ids.size(), (size_t)5);
}

TEST(session_len_refusal_and_length_stop) {
  Harness h(16, 4, 4, 64, 16);
  auto a = h.add(1, iota(17), 4);  // longer than the session
  Output o = out_of(a);
  CHECK(o.finish == FinishReason::kError);
  CHECK(o.error.find("session_len") != std::string::npos);
  auto b = h.add(2, iota(12), 100, true, false);  // generation stops at session_len
  h.run_until_idle();
  o = out_of(b);
  CHECK(o.finish == FinishReason::kLength);
  CHECK_EQ(o.token_ids.size(), (size_t)4);
  CHECK_EQ(h.s.find(2)->tokens.size(), (size_t)16);
  auto c = h.add(2, {1}, 1, false, false);  // 16 + 1 > 16: refused, history untouched
  CHECK(out_of(c).finish == FinishReason::kError);
  CHECK_EQ(h.s.find(2)->tokens.size(), (size_t)16);
  auto d = h.add(3, iota(16), 5, true, false);  // exactly session_len: prefill, then kLength
  h.run_until_idle();
  CHECK(out_of(d).finish == FinishReason::kLength);
  CHECK(out_of(d).token_ids.empty());
  CHECK_EQ(h.s.find(3)->num_cached, 16);
}

TEST(max_new_tokens_zero_prefills_only) {
  Harness h(16, 4, 4, 64, 64);
  auto a = h.add(1, iota(6), 0, true, false);
  auto s = h.step();
  CHECK(find(s, 1)->n == 6 && !find(s, 1)->sample);
  CHECK(out_of(a).finish == FinishReason::kLength);
  CHECK_EQ(h.s.find(1)->num_cached, 6);
  auto b = h.add(1, {}, 0, false, true);  // ends the session without computing
  CHECK(out_of(b).finish == FinishReason::kLength);
  CHECK(h.s.find(1) == nullptr);
  CHECK_EQ(h.bm.num_free(), 16);
}

TEST(eos_and_stop_sequences_are_not_streamed_nor_kept) {
  Harness h(16, 4, 4, 64, 64);
  // eos (2) ends the request; it is neither streamed nor kept in the history.
  std::vector<int32_t> script = {20, 21, 2, 99};
  size_t k = 0;
  auto pick = [&](const Sequence&) { return script[k++]; };
  auto a = h.add(1, iota(3), 10, true, false);
  while (h.s.has_work()) h.step(pick);
  Output o = out_of(a);
  CHECK(o.finish == FinishReason::kStop);
  CHECK(o.token_ids == std::vector<int32_t>({20, 21}));
  CHECK_EQ(h.s.find(1)->tokens.size(), (size_t)5);
  // ignore_eos: 2 is just a token
  GenerationConfig g;
  g.ignore_eos = true;
  script = {2, 2};
  k = 0;
  auto b = h.add(2, iota(3), 2, true, true, -1, g);
  while (h.s.has_work()) h.step(pick);
  CHECK(out_of(b).token_ids == std::vector<int32_t>({2, 2}));
  // stop sequence [5, 6, 7]: 5 6 held back, 8 breaks the partial match (flushed), then 5 6 7 stops.
  g = GenerationConfig();
  g.stop_sequences = {{5, 6, 7}};
  script = {5, 6, 8, 5, 6, 7, 9};
  k = 0;
  auto c = h.add(3, iota(3), 20, true, false, -1, g);
  std::vector<size_t> seen;
  while (h.s.has_work()) {
    h.step(pick);
    seen.push_back(out_of(c).token_ids.size());
  }
  CHECK(seen == std::vector<size_t>({0, 0, 3, 3, 3, 3}));
  o = out_of(c);
  CHECK(o.finish == FinishReason::kStop);
  CHECK(o.token_ids == std::vector<int32_t>({5, 6, 8}));
  CHECK_EQ(h.s.find(3)->tokens.size(), (size_t)6);  // prompt 3 + streamed 3
  CHECK(h.s.find(3)->num_cached <= 6);
  // a held-back partial match is flushed when the request ends for length
  script = {5, 6};
  k = 0;
  auto d = h.add(4, iota(3), 2, true, true, -1, g);
  while (h.s.has_work()) h.step(pick);
  CHECK(out_of(d).token_ids == std::vector<int32_t>({5, 6}));
  CHECK(out_of(d).finish == FinishReason::kLength);
}

TEST(stop_cancels_and_keeps_history) {
  Harness h(16, 4, 4, 64, 64);
  auto a = h.add(1, iota(3), 100, true, false);
  h.step();
  h.step();
  h.s.stop(1, false);
  Output o = out_of(a);
  CHECK(o.finish == FinishReason::kCancelled);
  CHECK_EQ(o.token_ids.size(), (size_t)2);
  CHECK(h.s.find(1)->status == SequenceStatus::kCached);
  CHECK_EQ(h.s.find(1)->tokens.size(), (size_t)5);
  h.ok();
  auto b = h.add(1, {40}, 100, false, false);
  h.step();
  h.s.stop(1, true);  // cancel and free
  CHECK(out_of(b).finish == FinishReason::kCancelled);
  CHECK(h.s.find(1) == nullptr);
  CHECK_EQ(h.bm.num_free(), 16);
  h.ok();
}

// With prefix caching (odd rounds) every prompt is iota(len), so prompts share their first blocks
// with each other and with idle sessions' histories: shared, pooled and evicted blocks all occur.
TEST(random_workload_keeps_invariants) {
  std::mt19937 rng(1234);
  for (int round = 0; round < 6; ++round) {
    Harness h(12, 4, 3, 10, 40, round % 2 == 1);
    std::vector<std::shared_ptr<Stream>> streams;
    std::vector<int> asked;
    for (int t = 0; t < 400; ++t) {
      if (rng() % 3 == 0) {
        uint64_t id = rng() % 6;
        const Sequence* s = h.s.find(id);
        bool start = !s || rng() % 4 == 0;
        int len = 1 + rng() % 20;
        int max_new = rng() % 12;
        int step = (!start && s && rng() % 3 == 0) ? (int)(rng() % (s->tokens.size() + 1)) : -1;
        streams.push_back(h.add(id, iota(len), max_new, start, rng() % 2 == 0, step));
        asked.push_back(max_new);
      }
      if (rng() % 17 == 0) h.s.stop(rng() % 6, rng() % 2);
      if (rng() % 23 == 0) h.s.end(rng() % 6);
      if (h.s.has_work()) h.step();
    }
    h.run_until_idle();
    for (size_t i = 0; i < streams.size(); ++i) {
      Output o = out_of(streams[i]);
      CHECK(o.finish != FinishReason::kNone);
      CHECK((int)o.token_ids.size() <= asked[i]);
    }
    if (round % 2 == 1) {
      std::printf("  prefix caching round: %lld tokens reused\n", h.s.num_reused_tokens());
      CHECK(h.s.num_reused_tokens() > 0);
    }
  }
}

int main() { return check::run_all(); }
