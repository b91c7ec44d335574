// Sequence: one session's state on the engine thread: its token history, how much of it has K/V
// in the cache, the blocks that hold that K/V, and the request it is serving now (if any).
//
// A session lives across requests (sequence_start=false continues it); its Sequence is created by
// the first request and destroyed when a request with sequence_end finishes (or end()).
// Only the engine thread touches a Sequence. States (see README.md):
//
//   kWaiting  -- admitted -->  kRunning  -- finish (no sequence_end) -->  kCached
//   kRunning  -- preempt  -->  kWaiting  (blocks freed, history recomputed later)
//   kCached   -- next request of the session -->  kWaiting
//   any       -- finish with sequence_end / end() -->  kFinished (then destroyed)
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "engine/request.h"

namespace turbolm {

enum class SequenceStatus : int {
  kWaiting = 0,   // has a request, not in the running batch; holds no active blocks (cached ones maybe)
  kRunning = 1,   // in the running batch; its blocks are active
  kCached = 2,    // idle session: history kept, its blocks (if not evicted) cached and evictable
  kFinished = 3,  // ended; about to be destroyed
};
const char* to_string(SequenceStatus s);

struct Sequence {
  uint64_t session_id = 0;
  SequenceStatus status = SequenceStatus::kCached;

  // --- session state (kept between requests) ---
  std::vector<int32_t> tokens;       // history: every prompt and kept generated token of the session
  int num_cached = 0;                // tokens [0, num_cached) have their K/V in `block_table`
  std::vector<int32_t> block_table;  // block ids; position p lives in block_table[p / block_len]
  // Owned by BlockManager: whether this table counts as an active holder of its blocks (admitted
  // or running) rather than an idle one, and the chained hashes of its leading full blocks.
  bool blocks_active = false;
  std::vector<uint64_t> block_hashes;

  // --- the current request (valid while kWaiting / kRunning) ---
  std::shared_ptr<Stream> stream;
  GenerationConfig gen;
  bool end_after = true;  // request's sequence_end: free the session when the request finishes
  int prompt_len = 0;     // tokens.size() once the prompt was appended: generated tokens follow it
  int max_new = 0;        // min(gen.max_new_tokens, session_len - prompt_len)
  std::vector<TokenLogprob> logprobs;  // [num_generated()] logprob of each generated token
  // With gen.prompt_logprobs >= 0: [0, prompt_len - 1) filled in position order as the prompt's
  // logits rows are computed (a recompute after preemption skips those already there); sent to
  // the stream once complete.
  std::vector<TokenLogprob> prompt_lps;
  bool prompt_lps_sent = false;
  int num_streamed = 0;         // generated tokens already pushed to the stream (others held back)
  int history_len = 0;          // tokens of the session before this request's input
  bool admitted = false;        // admitted at least once (the prefix-cache hit was reported)
  std::mt19937_64 rng;          // seeded with gen.random_seed when the request binds

  int num_generated() const { return (int)tokens.size() - prompt_len; }
  const int32_t* generated() const { return tokens.data() + prompt_len; }
  // Tokens whose K/V must still be computed before the next token can be sampled.
  int num_remaining() const { return (int)tokens.size() - num_cached; }
  // The prompt positions [0, prompt_len - 1) whose next-token logprobs are still to be recorded.
  bool wants_prompt_logprobs() const { return gen.prompt_logprobs >= 0 && (int)prompt_lps.size() < prompt_len - 1; }
};

inline const char* to_string(SequenceStatus s) {
  switch (s) {
    case SequenceStatus::kWaiting: return "waiting";
    case SequenceStatus::kRunning: return "running";
    case SequenceStatus::kCached: return "cached";
    case SequenceStatus::kFinished: return "finished";
  }
  return "?";
}

}  // namespace turbolm
