// TokenMask: a sequence's structured-output constraint, the set of tokens its next sample may
// take, as a bitmask computed OUTSIDE the engine (by a grammar engine -- llguidance, driven from
// Python through the binding) so the engine thread never runs grammar code or takes the GIL.
//
// Protocol, one mask per generated token:
//   worker : fills buffer() for the first token, publish()es it, then submits the request
//   engine : wait() for the published mask, samples with it, advance(token): the mask becomes
//            pending and a job (tag, token) goes to the MaskQueue
//   worker : MaskQueue::pop() -> feeds the token to its matcher, fills buffer(), publish()es
// The job is pushed right after sampling, so the worker computes step t+1's mask while the engine
// runs step t+1's forward pass; the engine waits only if the mask is still not ready when it samples
// that row, and the other rows of the batch are sampled meanwhile (rows are sampled in parallel).
//
// Threads: buffer() is written only between advance() and publish() (worker), read only between
// publish() and advance() (engine); the mutex orders the two. A closed queue (shutdown) or a
// worker that reports an error fails the mask: wait() returns false and the engine ends the
// request instead of waiting forever.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace turbolm {

class TokenMask;

// Jobs for the mask workers: (tag, token just sampled, its mask). One queue may serve many masks.
class MaskQueue {
 public:
  struct Job {
    uint64_t tag = 0;
    int32_t token = -1;
    std::shared_ptr<TokenMask> mask;
  };
  void push(Job job);
  // Blocks up to timeout_ms (-1: forever) for a job; false on timeout or once closed and drained.
  bool pop(Job& out, int timeout_ms);
  // Fails every mask still waiting for a job's result, and every later push; wakes poppers.
  void close();
  bool closed() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool closed_ = false;
};

class TokenMask : public std::enable_shared_from_this<TokenMask> {
 public:
  TokenMask(int vocab, std::shared_ptr<MaskQueue> queue, uint64_t tag);
  int vocab() const { return vocab_; }
  int words() const { return (int)bits_.size(); }
  uint64_t tag() const { return tag_; }

  // Worker side.
  uint32_t* buffer() { return bits_.data(); }  // [words()]: bit t % 32 of word t / 32 = token t allowed
  void publish(bool ok = true, const std::string& error = "");

  // Engine side. wait(): true once the mask for the next token is published (false: failed, or
  // timeout_ms passed); then bits() is valid until advance().
  bool wait(int timeout_ms);
  const uint32_t* bits() const { return bits_.data(); }
  std::string error() const;
  void advance(int32_t token);

 private:
  const int vocab_;
  const std::shared_ptr<MaskQueue> queue_;
  const uint64_t tag_;
  std::vector<uint32_t> bits_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool ready_ = false;
  bool failed_ = false;
  std::string error_;
};

}  // namespace turbolm
