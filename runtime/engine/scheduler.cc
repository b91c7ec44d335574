#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"
#include "engine/sampler.h"

namespace turbolm {

Scheduler::Scheduler(const SchedulerConfig& cfg, BlockManager& blocks) : cfg_(cfg), blocks_(blocks) {
  TURBOLM_CHECK(cfg.max_batch_size > 0 && cfg.max_num_tokens > 0 && cfg.session_len > 0,
                "Scheduler: max_batch_size, max_num_tokens and session_len must be > 0");
  TURBOLM_CHECK(blocks.blocks_for(cfg.session_len) <= blocks.num_blocks(), "Scheduler: a pool of ",
                blocks.num_blocks(), " blocks of ", blocks.block_len(), " tokens cannot hold one session of ",
                cfg.session_len, " tokens");
}

Scheduler::~Scheduler() = default;

const Sequence* Scheduler::find(uint64_t session_id) const {
  auto it = sessions_.find(session_id);
  return it == sessions_.end() ? nullptr : it->second.get();
}

void Scheduler::add(const Request& req, std::shared_ptr<Stream> stream) {
  const uint64_t id = req.session_id;
  DeliverOnReturn deliver{this};  // every way out of add() delivers what it staged (unless deferred)
  auto refuse = [&](const std::string& why) {
    stream->stage_finish(FinishReason::kError, "session " + std::to_string(id) + ": " + why);
    touch(stream);
  };
  auto it = sessions_.find(id);
  Sequence* s = it == sessions_.end() ? nullptr : it->second.get();
  if (s && (s->status == SequenceStatus::kWaiting || s->status == SequenceStatus::kRunning))
    return refuse("busy: a request of this session is still running; wait for it or stop() it");

  const int input = (int)req.input_ids.size();
  int base = 0;  // history tokens kept before the new input
  if (!req.sequence_start) {
    if (!s) {
      if (input == 0 && req.sequence_end) {  // ending nothing
        stream->stage_finish(FinishReason::kStop);
        return touch(stream);
      }
      return refuse("not found (never started, or ended); start it with sequence_start=true");
    }
    base = (int)s->tokens.size();
    if (req.step >= 0) {
      if (req.step > base)
        return refuse("step " + std::to_string(req.step) + " is beyond the session's history of " +
                      std::to_string(base) + " tokens");
      base = req.step;
    }
  }
  if (base + input > cfg_.session_len)
    return refuse(std::to_string(base) + " history + " + std::to_string(input) + " input tokens exceed session_len " +
                  std::to_string(cfg_.session_len));
  if (base + input == 0) return refuse("nothing to compute: empty history and empty input");

  if (!s) {
    auto owned = std::make_unique<Sequence>();
    owned->session_id = id;
    s = owned.get();
    sessions_[id] = std::move(owned);
  }
  if (req.sequence_start) {
    blocks_.deallocate(*s);  // a new conversation on this id: cached -> free
    s->tokens.clear();
  } else if (req.step >= 0) {
    s->tokens.resize(base);
    blocks_.truncate(*s, base);  // rewind: blocks past `step` cached -> free
  }
  s->tokens.insert(s->tokens.end(), req.input_ids.begin(), req.input_ids.end());
  s->stream = std::move(stream);
  s->gen = req.gen;
  s->end_after = req.sequence_end;
  s->prompt_len = (int)s->tokens.size();
  s->max_new = std::min(req.gen.max_new_tokens, cfg_.session_len - s->prompt_len);
  s->logprobs.clear();
  s->prompt_lps.clear();
  s->prompt_lps_sent = false;
  s->admitted = false;
  s->history_len = base;
  s->num_streamed = 0;
  s->rng.seed(req.gen.random_seed);

  // Nothing to compute for the request (prompt logprobs are: they need the prompt's logits).
  if (s->max_new == 0 && (s->end_after || input == 0) && req.gen.prompt_logprobs < 0)
    return finish(s, FinishReason::kLength);
  // Sampling needs the logits of the last token: recompute it if its K/V is already cached.
  if (s->max_new > 0 && s->num_cached >= (int)s->tokens.size()) s->num_cached = (int)s->tokens.size() - 1;
  s->status = SequenceStatus::kWaiting;  // cached -> waiting (its blocks stay cached, evictable)
  waiting_.push_back(s);
}

void Scheduler::stop(uint64_t session_id, bool end) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  DeliverOnReturn deliver{this};
  Sequence* s = it->second.get();
  if (s->status == SequenceStatus::kWaiting || s->status == SequenceStatus::kRunning) {
    s->end_after = s->end_after || end;
    finish(s, FinishReason::kCancelled);
  } else if (end) {
    blocks_.deallocate(*s);  // cached -> free
    sessions_.erase(it);
  }
}

void Scheduler::end(uint64_t session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  Sequence* s = it->second.get();
  if (s->status == SequenceStatus::kWaiting || s->status == SequenceStatus::kRunning) {
    s->end_after = true;  // freed when its request finishes
  } else {
    blocks_.deallocate(*s);  // cached -> free
    sessions_.erase(it);
  }
}

std::vector<ScheduledSeq> Scheduler::schedule() {
  std::vector<ScheduledSeq> batch;
  int budget = cfg_.max_num_tokens;
  auto wants_sample = [](const Sequence* s, int n) {
    return s->num_cached + n == (int)s->tokens.size() && s->num_generated() < s->max_new;
  };

  // 1. Running sequences, oldest first.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i];
    int n;
    if (s->num_remaining() == 1) {  // decode (or the last prompt token)
      bool preempted_self = false;
      while (!blocks_.can_append(*s)) {  // cached sessions are already counted as available
        Sequence* victim = running_.back();
        preempt(victim);
        if (victim == s) { preempted_self = true; break; }
      }
      if (preempted_self) break;  // it was the last running sequence
      blocks_.may_append(*s);  // free -> active (evicting cached sessions first)
      n = 1;
    } else {  // mid-prompt: its blocks were allocated on admission
      int reserve = 0;  // one token for every decode behind it
      for (size_t j = i + 1; j < running_.size(); ++j) reserve += running_[j]->num_remaining() == 1;
      n = std::min(s->num_remaining(), budget - reserve);
      if (n <= 0) { ++i; continue; }
    }
    batch.push_back({s, n, wants_sample(s, n)});
    budget -= n;
    ++i;
  }

  // 2. Waiting sequences, FIFO, each with blocks for its whole history + prompt.
  while (!waiting_.empty() && budget > 0 && (int)running_.size() < cfg_.max_batch_size) {
    Sequence* s = waiting_.front();
    blocks_.activate(*s);  // cached -> active, so allocating cannot evict its own blocks
    // Holding no blocks (new, preempted, evicted): reuse the registered blocks its tokens start
    // with. Not for prompt logprobs, which need every prompt position's logits.
    const int reused = s->gen.prompt_logprobs < 0 ? blocks_.match_prefix(*s) : 0;
    int need = blocks_.blocks_needed(*s, (int)s->tokens.size());
    if (!blocks_.can_allocate(need)) {
      if (reused) blocks_.deallocate(*s);  // let go of the matched blocks until it fits
      else blocks_.cache(*s);  // active -> cached: wait for running sequences to free blocks
      break;
    }
    reused_tokens_ += reused;  // counted once admitted: a blocked head of the queue re-matches every step
    if (!s->admitted) {  // the first admission of the request: tell its caller what was reused
      s->admitted = true;
      s->stream->stage_cached_tokens(std::max(0, std::min(reused, s->prompt_len) - s->history_len));
      touch(s->stream);
    }
    blocks_.allocate(*s, (int)s->tokens.size());  // free -> active
    waiting_.pop_front();
    s->status = SequenceStatus::kRunning;  // waiting -> running
    running_.push_back(s);
    int n = std::min(s->num_remaining(), budget);
    batch.push_back({s, n, wants_sample(s, n)});
    budget -= n;
  }
  return batch;
}

void Scheduler::preempt(Sequence* s) {
  ++preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), s));
  blocks_.deallocate(*s);                // active -> free; the history is recomputed on re-admission
  s->status = SequenceStatus::kWaiting;  // running -> waiting
  waiting_.push_front(s);
}

bool Scheduler::preempt_latest() {
  if (running_.empty()) return false;
  preempt(running_.back());
  return true;
}

void Scheduler::stream_ready(Sequence* s, int holdback) {
  int upto = s->num_generated() - holdback;
  const int32_t* gen = s->generated();
  if (s->num_streamed >= upto) return;
  for (; s->num_streamed < upto; ++s->num_streamed) s->stream->stage(gen[s->num_streamed], s->logprobs[s->num_streamed]);
  touch(s->stream);
}

void Scheduler::touch(const std::shared_ptr<Stream>& st) {
  touched_.push_back(st);  // twice at most a step (tokens, then the finish): commit() is idempotent
}

void Scheduler::deliver() {
  for (auto& st : touched_) st->commit();  // commit() of an already-committed stream is a no-op
  touched_.clear();
}

void Scheduler::postprocess(const std::vector<ScheduledSeq>& batch, const std::vector<int32_t>& tokens,
                            std::vector<TokenLogprob> logprobs) {
  size_t k = 0;
  for (const ScheduledSeq& item : batch) {
    Sequence* s = item.seq;
    s->num_cached += item.n_tokens;
    blocks_.register_full(*s);  // its newly full blocks become findable by other sequences
    if (s->gen.prompt_logprobs >= 0 && !s->prompt_lps_sent && !s->wants_prompt_logprobs()) {
      s->prompt_lps_sent = true;
      s->stream->stage_prompt(s->prompt_lps);  // committed with the first token (or the finish)
      touch(s->stream);
    }
    if (!item.sample) {
      if (s->num_remaining() == 0) finish(s, FinishReason::kLength);  // prompt done, no token wanted
      continue;
    }
    TURBOLM_CHECK(k < tokens.size(), "Scheduler::postprocess: fewer sampled tokens than sampling sequences");
    int32_t tok = tokens[k];
    TokenLogprob lp = k < logprobs.size() ? std::move(logprobs[k]) : TokenLogprob{};
    ++k;
    s->tokens.push_back(tok);
    s->logprobs.push_back(std::move(lp));
    const GenerationConfig& g = s->gen;
    const int n = s->num_generated();
    int drop = (!g.ignore_eos && tok == cfg_.end_id) ? 1 : stop_match(s->generated(), n, g.stop_sequences);
    if (drop > 0) {
      // The stop token(s) are neither streamed nor kept in the history.
      s->tokens.resize(s->tokens.size() - drop);
      s->logprobs.resize(s->logprobs.size() - drop);
      blocks_.truncate(*s, (int)s->tokens.size());
      finish(s, FinishReason::kStop);
    } else if (n >= s->max_new) {
      finish(s, FinishReason::kLength);  // max_new_tokens, or session_len reached
    } else {
      stream_ready(s, stop_holdback(s->generated(), n, g.stop_sequences));
    }
  }
  done_call();
}

void Scheduler::fail(const std::vector<ScheduledSeq>& batch, const std::string& error) {
  for (const ScheduledSeq& item : batch) {
    Sequence* s = item.seq;
    blocks_.deallocate(*s);  // the K/V written this step is not trustworthy: active -> free
    finish(s, FinishReason::kError, error);
  }
  done_call();
}

void Scheduler::cancel_all(FinishReason reason, const std::string& error) {
  std::vector<Sequence*> all(running_.begin(), running_.end());
  all.insert(all.end(), waiting_.begin(), waiting_.end());
  for (Sequence* s : all) finish(s, reason, error);
  done_call();
}

void Scheduler::finish(Sequence* s, FinishReason reason, const std::string& error) {
  if (s->stream) stream_ready(s, 0);  // flush held-back tokens: the history is prompts + streamed tokens
  std::shared_ptr<Stream> stream = std::move(s->stream);
  s->stream.reset();
  auto r = std::find(running_.begin(), running_.end(), s);
  if (r != running_.end()) running_.erase(r);
  auto w = std::find(waiting_.begin(), waiting_.end(), s);
  if (w != waiting_.end()) waiting_.erase(w);
  if (s->end_after) {
    blocks_.deallocate(*s);                 // active / cached -> free
    s->status = SequenceStatus::kFinished;  // running / waiting -> finished
    sessions_.erase(s->session_id);         // destroys s
  } else {
    if (s->status == SequenceStatus::kRunning) s->num_cached = std::min(s->num_cached, (int)s->tokens.size());
    s->status = SequenceStatus::kCached;  // running / waiting -> cached
    blocks_.cache(*s);                    // active -> cached (most recently used)
  }
  // Last, so a caller that sees the finish and submits again finds the session idle.
  if (stream) {
    stream->stage_finish(reason, error);
    touch(stream);
  }
}

void Scheduler::check_invariants() const {
  std::vector<const Sequence*> all;
  for (auto& kv : sessions_) all.push_back(kv.second.get());
  blocks_.check_invariants(all);
  TURBOLM_CHECK((int)running_.size() <= cfg_.max_batch_size, "invariant: more running than max_batch_size");
  for (const Sequence* s : running_)
    TURBOLM_CHECK(s->status == SequenceStatus::kRunning && s->num_remaining() >= 1 &&
                      (int)s->block_table.size() >= blocks_.blocks_for(s->num_cached),
                  "invariant: running session ", s->session_id, " inconsistent");
  for (const Sequence* s : waiting_)
    TURBOLM_CHECK(s->status == SequenceStatus::kWaiting && s->num_remaining() >= 1,
                  "invariant: waiting session ", s->session_id, " inconsistent");
  int busy = 0;
  for (auto& kv : sessions_) {
    const Sequence* s = kv.second.get();
    busy += s->status == SequenceStatus::kRunning || s->status == SequenceStatus::kWaiting;
    TURBOLM_CHECK(s->num_cached <= (int)s->tokens.size() && (int)s->tokens.size() <= cfg_.session_len,
                  "invariant: session ", s->session_id, " has ", s->num_cached, " cached of ", s->tokens.size(),
                  " tokens (session_len ", cfg_.session_len, ")");
  }
  TURBOLM_CHECK(busy == (int)(running_.size() + waiting_.size()), "invariant: busy sessions not all queued");
}

}  // namespace turbolm
