#include "engine/request.h"

#include <unistd.h>

#include <chrono>
#include <cstdint>

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

void Stream::push(int32_t token, float logprob) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    out_.token_ids.push_back(token);
    out_.logprobs.push_back(logprob);
    notify_locked();
  }
  cv_.notify_all();
}

void Stream::finish(FinishReason reason, const std::string& error) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (out_.finish != FinishReason::kNone) return;  // first finish wins
    out_.finish = reason;
    out_.error = error;
    notify_locked();
  }
  cv_.notify_all();
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

void Stream::set_notify_fd(int fd) {
  std::lock_guard<std::mutex> lk(mu_);
  notify_fd_ = fd;
}

// Called with mu_ held: the owner detaches (set_notify_fd(-1)) before closing the fd, so a write
// never reaches a closed (or reused) descriptor.
void Stream::notify_locked() {
  int fd = notify_fd_;
  if (fd >= 0) {
    uint64_t one = 1;
    ssize_t r = ::write(fd, &one, sizeof(one));  // eventfd never blocks for a single increment
    (void)r;
  }
}

bool Stream::finished() const {
  std::lock_guard<std::mutex> lk(mu_);
  return out_.finish != FinishReason::kNone;
}

}  // namespace turbolm
