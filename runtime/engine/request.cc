#include "engine/request.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <algorithm>

#include "core/error.h"

namespace turbolm {

const char* to_string(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "?";
}

// ---------------------------------------------------------------- Notifier

Notifier::Notifier() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  TURBOLM_CHECK(fd_ >= 0, "Notifier: eventfd failed: ", std::strerror(errno));
}

Notifier::~Notifier() {
  if (fd_ >= 0) ::close(fd_);
}

void Notifier::mark(uint64_t tag) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lk(mu_);
    was_empty = ready_.empty();
    ready_.push_back(tag);
  }
  // Written after the unlock: the write wakes the reader, which would otherwise block on mu_
  // while this thread is still inside it. A drain() between the push and the write takes the
  // tag early and leaves one spurious wake-up with an empty list, which costs nothing.
  if (was_empty) {
    uint64_t one = 1;
    ssize_t r = ::write(fd_, &one, sizeof(one));  // never blocks for a single increment
    (void)r;
  }
}

std::vector<uint64_t> Notifier::drain() {
  std::vector<uint64_t> out;
  std::lock_guard<std::mutex> lk(mu_);
  uint64_t v;
  ssize_t r = ::read(fd_, &v, sizeof(v));  // resets the counter; EAGAIN when already 0
  (void)r;
  out.swap(ready_);
  return out;
}

// ---------------------------------------------------------------- Stream

void Stream::stage(int32_t token, const TokenLogprob& logprob) {
  staged_ids_.push_back(token);
  staged_lps_.push_back(logprob);
}

void Stream::stage_prompt(std::vector<TokenLogprob> logprobs) { staged_prompt_ = std::move(logprobs); }

void Stream::stage_cached_tokens(int n) { staged_cached_ = n; }

void Stream::stage_finish(FinishReason reason, const std::string& error) {
  if (staged_finish_ != FinishReason::kNone) return;  // first finish wins
  staged_finish_ = reason;
  staged_error_ = error;
}

void Stream::commit() {
  if (staged_ids_.empty() && staged_finish_ == FinishReason::kNone && staged_prompt_.empty() && staged_cached_ < 0)
    return;
  std::shared_ptr<Notifier> notifier;
  uint64_t tag = 0;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (out_.finish == FinishReason::kNone) {  // nothing follows a finish
      out_.token_ids.insert(out_.token_ids.end(), staged_ids_.begin(), staged_ids_.end());
      out_.logprobs.insert(out_.logprobs.end(), staged_lps_.begin(), staged_lps_.end());
      if (!staged_prompt_.empty()) out_.prompt_logprobs = std::move(staged_prompt_);
      if (staged_cached_ >= 0) out_.cached_tokens = staged_cached_;
      if (staged_finish_ != FinishReason::kNone) {
        out_.finish = staged_finish_;
        out_.error = staged_error_;
      }
    }
    notifier = notifier_;
    tag = tag_;
  }
  staged_ids_.clear();
  staged_lps_.clear();
  staged_prompt_.clear();
  staged_cached_ = -1;
  staged_finish_ = FinishReason::kNone;
  staged_error_.clear();
  cv_.notify_all();
  if (notifier) notifier->mark(tag);
}

void Stream::push(int32_t token, const TokenLogprob& logprob) {
  stage(token, logprob);
  commit();
}

void Stream::finish(FinishReason reason, const std::string& error) {
  stage_finish(reason, error);
  commit();
}

bool Stream::wait(size_t seen, Output& out, int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  auto ready = [&] { return out_.token_ids.size() > seen || out_.finish != FinishReason::kNone; };
  bool ok = true;
  if (timeout_ms < 0) cv_.wait(lk, ready);
  else ok = cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), ready);
  out = out_;
  return ok;
}

bool Stream::wait_tail(size_t from, Output& tail, size_t& total, int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  auto ready = [&] { return out_.token_ids.size() > from || out_.finish != FinishReason::kNone; };
  bool ok = true;
  if (timeout_ms < 0) cv_.wait(lk, ready);
  else if (timeout_ms > 0) ok = cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), ready);
  else ok = ready();
  const size_t n = out_.token_ids.size(), b = from < n ? from : n;
  tail.token_ids.assign(out_.token_ids.begin() + b, out_.token_ids.end());
  tail.logprobs.assign(out_.logprobs.begin() + std::min(b, out_.logprobs.size()), out_.logprobs.end());
  if (from == 0) tail.prompt_logprobs = out_.prompt_logprobs;
  tail.cached_tokens = out_.cached_tokens;
  tail.finish = out_.finish;
  tail.error = out_.error;
  total = n;
  return ok;
}

void Stream::set_notifier(std::shared_ptr<Notifier> notifier, uint64_t tag) {
  bool ready;
  {
    std::lock_guard<std::mutex> lk(mu_);
    notifier_ = notifier;
    tag_ = tag;
    ready = notifier && (!out_.token_ids.empty() || out_.finish != FinishReason::kNone);
  }
  // Outputs committed before the notifier was attached would otherwise never wake the reader.
  if (ready) notifier->mark(tag);
}

bool Stream::finished() const {
  std::lock_guard<std::mutex> lk(mu_);
  return out_.finish != FinishReason::kNone;
}

}  // namespace turbolm
