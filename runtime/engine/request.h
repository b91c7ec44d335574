// What crosses between Python (the binding) and the engine: a Request goes in, a Stream of
// outputs comes back. Text never crosses; token ids and settings do.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace turbolm {

class TokenMask;  // engine/token_mask.h

enum class FinishReason : int { kNone = 0, kStop = 1, kLength = 2, kCancelled = 3, kError = 4 };
const char* to_string(FinishReason r);

// Most alternatives a token's logprobs may list (OpenAI's top_logprobs limit).
constexpr int kMaxTopLogprobs = 20;

// One token's log-probability and its most probable alternatives, all log-softmax of the RAW
// model logits (before logit_bias, penalties, temperature and any mask: vLLM's default), so a
// token's logprob is the model's and does not move with the sampling settings.
struct TokenLogprob {
  float logprob = 0.f;
  std::vector<std::pair<int32_t, float>> top;  // [k] (id, logprob), most probable first, ties: lower id
  bool operator==(const TokenLogprob& o) const { return logprob == o.logprob && top == o.top; }
};

struct GenerationConfig {
  int max_new_tokens = 512;  // request_output_len
  int top_k = 1;             // 0 or 1 with temperature 0 / top_p 0: greedy
  float top_p = 1.f;
  float temperature = 1.f;   // <= 0: greedy
  float repetition_penalty = 1.f;
  float presence_penalty = 0.f;   // OpenAI: minus this from every token generated so far (once)
  float frequency_penalty = 0.f;  // OpenAI: minus this times how often a token was generated
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token, bias) added to the raw logits
  uint64_t random_seed = 0;
  bool ignore_eos = false;
  std::vector<std::vector<int32_t>> stop_sequences;  // a whole sequence must match to stop
  bool logprobs = false;     // log-probability of each sampled token
  int top_logprobs = 0;      // with logprobs: this many alternatives per generated token, <= kMaxTopLogprobs
  int prompt_logprobs = -1;  // >= 0: logprob of every prompt token but the first, with this many
                             // alternatives (needs sequence_start); max_new_tokens may then be 0
  // Structured output: each sample keeps only the tokens this mask allows (see token_mask.h).
  std::shared_ptr<TokenMask> token_mask;
};

struct Request {
  uint64_t session_id = 0;
  std::vector<int32_t> input_ids;
  bool sequence_start = true;  // false: continue the session's cached history
  bool sequence_end = true;    // true: free the session's blocks when finished
  int step = -1;               // >= 0: rewind the session's history to `step` tokens first
  GenerationConfig gen;
};

// Output of one request, updated by the engine thread, read by the caller. Thread-safe.
struct Output {
  std::vector<int32_t> token_ids;      // generated tokens so far (not the prompt)
  std::vector<TokenLogprob> logprobs;  // parallel to token_ids when requested
  // With prompt_logprobs: [prompt_len - 1], for prompt tokens 1.. (token 0 has no context). Set
  // with the first committed token (or the finish); wait_tail() copies it when `from` is 0.
  std::vector<TokenLogprob> prompt_logprobs;
  // This request's input tokens whose K/V came from the prefix cache instead of being computed
  // (set when the request is first admitted).
  int cached_tokens = 0;
  FinishReason finish = FinishReason::kNone;
  std::string error;               // set with kError (e.g. prompt longer than the session)
};

// One wake-up source for many streams: a stream that becomes readable appends its tag to the
// ready list, and the eventfd is written only when the list goes from empty to non-empty. An
// asyncio loop waits on fd(), then drain()s the tags of every stream with news: one wake-up
// and one syscall per engine step however many streams are served, not one per stream.
class Notifier {
 public:
  Notifier();   // throws Error when no eventfd can be made
  ~Notifier();  // closes the fd; streams hold a shared_ptr, so it outlives every attached stream
  int fd() const { return fd_; }
  void mark(uint64_t tag);        // engine side
  std::vector<uint64_t> drain();  // caller side: the tags marked since the last drain (resets the fd)

 private:
  int fd_ = -1;
  std::mutex mu_;
  std::vector<uint64_t> ready_;
};

// Engine side writes in two phases so a reader never sees a token or a finish before the
// engine's bookkeeping (stats(), the session's state) is consistent with it: stage_*() collect
// the outputs of a step privately (engine thread only, no lock), commit() publishes them all
// under one lock with one notification. push()/finish() are stage + commit.
//
// Caller side: wait() copies the whole output (the reference API yields cumulative ids);
// read_tail()/wait_tail() copy only the tokens from a given index, so a streaming reader's cost
// per wake-up does not grow with the output length.
class Stream {
 public:
  // Engine side.
  void stage(int32_t token, const TokenLogprob& logprob);
  void stage_prompt(std::vector<TokenLogprob> logprobs);
  void stage_cached_tokens(int n);
  void stage_finish(FinishReason reason, const std::string& error = "");
  void commit();
  void push(int32_t token, const TokenLogprob& logprob = {});
  void finish(FinishReason reason, const std::string& error = "");
  // Caller side: blocks until more than `seen` tokens exist or the request finished, or until
  // timeout_ms passes (-1: no timeout). Copies the state into `out`. Returns false on timeout.
  bool wait(size_t seen, Output& out, int timeout_ms = -1);
  // Like wait(), but copies only tokens [from, n) (and their logprobs) into `tail`; returns n
  // through `total`. timeout_ms = 0: do not block.
  bool wait_tail(size_t from, Output& tail, size_t& total, int timeout_ms = -1);
  bool finished() const;
  // Optional wake-up: every commit marks `tag` on `notifier` (nullptr: none). The engine thread
  // never touches Python. Detach (nullptr) when done reading.
  void set_notifier(std::shared_ptr<Notifier> notifier, uint64_t tag);

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Output out_;
  std::shared_ptr<Notifier> notifier_;
  uint64_t tag_ = 0;
  // Staged by the engine thread, not yet visible to readers.
  std::vector<int32_t> staged_ids_;
  std::vector<TokenLogprob> staged_lps_;
  std::vector<TokenLogprob> staged_prompt_;
  int staged_cached_ = -1;
  FinishReason staged_finish_ = FinishReason::kNone;
  std::string staged_error_;
};

}  // namespace turbolm
