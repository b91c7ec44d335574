// What crosses between Python (the binding) and the engine: a Request goes in, a Stream of
// outputs comes back. Text never crosses; token ids and settings do.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace turbolm {

enum class FinishReason : int { kNone = 0, kStop = 1, kLength = 2, kCancelled = 3, kError = 4 };
const char* to_string(FinishReason r);

struct GenerationConfig {
  int max_new_tokens = 512;  // request_output_len
  int top_k = 1;             // 0 or 1 with temperature 0 / top_p 0: greedy
  float top_p = 1.f;
  float temperature = 1.f;   // <= 0: greedy
  float repetition_penalty = 1.f;
  uint64_t random_seed = 0;
  bool ignore_eos = false;
  std::vector<std::vector<int32_t>> stop_sequences;  // a whole sequence must match to stop
  bool logprobs = false;     // log-probability of each sampled token
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
  std::vector<int32_t> token_ids;  // generated tokens so far (not the prompt)
  std::vector<float> logprobs;     // parallel to token_ids when requested
  FinishReason finish = FinishReason::kNone;
  std::string error;               // set with kError (e.g. prompt longer than the session)
};

class Stream {
 public:
  // Engine side.
  void push(int32_t token, float logprob);
  void finish(FinishReason reason, const std::string& error = "");
  // Caller side: blocks until more than `seen` tokens exist or the request finished, or until
  // timeout_ms passes (-1: no timeout). Copies the state into `out`. Returns false on timeout.
  bool wait(size_t seen, Output& out, int timeout_ms = -1);
  bool finished() const;
  // Optional: an eventfd written (8 bytes, value 1) on every push/finish, so an asyncio loop can
  // wait on the fd instead of a thread; the engine thread never touches Python. -1: none.
  // Detach (set -1) before closing the fd.
  void set_notify_fd(int fd);

 private:
  void notify_locked();
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Output out_;
  int notify_fd_ = -1;
};

}  // namespace turbolm
