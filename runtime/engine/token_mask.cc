#include "engine/token_mask.h"

#include <chrono>

namespace turbolm {

void MaskQueue::push(Job job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!closed_) {
      jobs_.push_back(std::move(job));
      job.mask.reset();
    }
  }
  if (job.mask) job.mask->publish(false, "the mask workers stopped");  // closed: nobody will answer
  cv_.notify_one();
}

bool MaskQueue::pop(Job& out, int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  auto ready = [&] { return closed_ || !jobs_.empty(); };
  if (timeout_ms < 0) cv_.wait(lk, ready);
  else if (!cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), ready)) return false;
  if (jobs_.empty()) return false;  // closed
  out = std::move(jobs_.front());
  jobs_.pop_front();
  return true;
}

void MaskQueue::close() {
  std::deque<Job> left;
  {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
    left.swap(jobs_);
  }
  for (Job& j : left) j.mask->publish(false, "the mask workers stopped");
  cv_.notify_all();
}

bool MaskQueue::closed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return closed_;
}

TokenMask::TokenMask(int vocab, std::shared_ptr<MaskQueue> queue, uint64_t tag)
    : vocab_(vocab), queue_(std::move(queue)), tag_(tag), bits_((size_t)(vocab + 31) / 32, 0u) {}

void TokenMask::publish(bool ok, const std::string& error) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    ready_ = true;
    if (!ok) {
      failed_ = true;
      error_ = error.empty() ? "the grammar mask failed" : error;
    }
  }
  cv_.notify_all();
}

bool TokenMask::wait(int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return ready_; })) {
    failed_ = true;
    error_ = "the grammar mask was not ready in time";
    return false;
  }
  return !failed_;
}

std::string TokenMask::error() const {
  std::lock_guard<std::mutex> lk(mu_);
  return error_;
}

void TokenMask::advance(int32_t token) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (failed_) return;
    ready_ = false;
  }
  if (queue_) queue_->push({tag_, token, shared_from_this()});
}

}  // namespace turbolm
