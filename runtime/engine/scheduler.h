// Scheduler: decides, each step, which sequences compute how many tokens, and applies the
// results. Owns every session's Sequence; shares the BlockManager with nobody but the engine
// thread. Pure host logic: tests drive it with made-up tokens, no model.
//
// schedule():
//   1. running sequences, oldest first: a decode (1 token left to compute) gets 1 token; a
//      sequence mid-prompt gets a chunk of the budget, leaving 1 token for every decode behind it.
//      A decode at a block boundary needs a block: idle sessions are evicted first (inside
//      BlockManager::allocate), then the LATEST running sequence is preempted (blocks freed, back
//      to the front of the waiting queue, recomputed later) -- possibly the decode itself.
//   2. waiting sequences, FIFO, while the batch has room (max_batch_size running) and tokens are
//      left: admitted only if blocks for their whole history+prompt can be had (free or evicted);
//      they get them all at once, then a first chunk. The head of the queue blocks the others
//      (no overtaking, so a long prompt is never starved).
//   Sum of tokens per step <= max_num_tokens; running sequences <= max_batch_size.
// postprocess(): advances num_cached, appends sampled tokens, applies the stop conditions,
//   streams tokens, finishes requests (sequence_end: free the session; else keep it cached).
//
// Sessions: a request for a session that has a request waiting or running is REFUSED at once
// (kError, "session N is busy"); requests are never queued behind each other per session.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/block_manager.h"
#include "engine/request.h"
#include "engine/sequence.h"

namespace turbolm {

struct SchedulerConfig {
  int max_batch_size = 64;   // running sequences at most
  int max_num_tokens = 512;  // tokens computed per step at most (prompt chunks + decodes)
  int session_len = 2048;    // history + prompt + generated tokens of a session at most
  int end_id = 2;            // eos
  // false: every call delivers its stream outputs before it returns (tests drive the scheduler
  // directly). true: outputs are staged until deliver(), so the engine can publish its stats
  // first and a reader that sees a finish also sees stats that include it.
  bool defer_delivery = false;
};

// One sequence's share of a step.
struct ScheduledSeq {
  Sequence* seq = nullptr;
  int n_tokens = 0;     // tokens [seq->num_cached, seq->num_cached + n_tokens) computed now
  bool sample = false;  // the chunk reaches the end of the history and a token is wanted
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& cfg, BlockManager& blocks);
  ~Scheduler();

  const SchedulerConfig& config() const { return cfg_; }

  // Binds a request to its session (creating, continuing, rewinding it) and queues it, or
  // finishes its stream at once with kError (busy session, unknown session, too long, ...).
  // Token ids are assumed valid (Engine::submit checks them).
  void add(const Request& req, std::shared_ptr<Stream> stream);
  // Cancels the session's request (kCancelled); `end` also frees the session.
  void stop(uint64_t session_id, bool end);
  // Frees an idle session now, or a busy one when its request finishes.
  void end(uint64_t session_id);

  std::vector<ScheduledSeq> schedule();
  // `tokens` / `logprobs`: one per item of `batch` with sample == true, in batch order (logprobs
  // may be empty: none wanted). Prompt logprobs the engine recorded in Sequence::prompt_lps are
  // sent to the stream here once complete, ahead of the first token.
  void postprocess(const std::vector<ScheduledSeq>& batch, const std::vector<int32_t>& tokens,
                   std::vector<TokenLogprob> logprobs = {});
  // The forward pass threw: finish the batch's requests with kError and drop their K/V.
  void fail(const std::vector<ScheduledSeq>& batch, const std::string& error);
  // Preempts the latest running sequence; false when none runs.
  bool preempt_latest();
  // Finishes every request: kCancelled at engine shutdown, kError (with `error`) when a step broke.
  void cancel_all(FinishReason reason = FinishReason::kCancelled, const std::string& error = "");

  // Commits the staged outputs (tokens, finishes) of every stream touched since the last call.
  void deliver();

  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  int num_running() const { return (int)running_.size(); }
  int num_waiting() const { return (int)waiting_.size(); }
  int num_sessions() const { return (int)sessions_.size(); }
  long long num_preemptions() const { return preemptions_; }
  long long num_reused_tokens() const { return reused_tokens_; }  // K/V taken from the prefix cache
  const Sequence* find(uint64_t session_id) const;
  // BlockManager::check_invariants over every session, plus the scheduler's own.
  void check_invariants() const;

 private:
  void preempt(Sequence* s);
  void finish(Sequence* s, FinishReason reason, const std::string& error = "");
  void stream_ready(Sequence* s, int holdback);  // stages generated tokens not held back
  void touch(const std::shared_ptr<Stream>& st);  // remembers a stream with staged outputs
  void done_call() { if (!cfg_.defer_delivery) deliver(); }
  struct DeliverOnReturn {  // done_call() on every way out of a public call
    Scheduler* self;
    ~DeliverOnReturn() { self->done_call(); }
  };

  SchedulerConfig cfg_;
  BlockManager& blocks_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> sessions_;
  std::vector<Sequence*> running_;  // admission order: preempt from the back
  std::deque<Sequence*> waiting_;   // FIFO; preempted sequences go back to the front
  long long preemptions_ = 0;
  long long reused_tokens_ = 0;
  std::vector<std::shared_ptr<Stream>> touched_;  // streams with staged outputs, until deliver()
};

}  // namespace turbolm
