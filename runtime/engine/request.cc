#include "engine/request.h"

#include <chrono>

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
  }
  cv_.notify_all();
}

void Stream::finish(FinishReason reason, const std::string& error) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (out_.finish != FinishReason::kNone) return;  // first finish wins
    out_.finish = reason;
    out_.error = error;
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

bool Stream::finished() const {
  std::lock_guard<std::mutex> lk(mu_);
  return out_.finish != FinishReason::kNone;
}

}  // namespace turbolm
