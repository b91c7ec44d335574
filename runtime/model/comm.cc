#include "model/comm.h"

#include <algorithm>
#include <thread>

#if defined(__x86_64__)
#include <immintrin.h>
#define TURBOLM_PAUSE() _mm_pause()
#else
#define TURBOLM_PAUSE() std::this_thread::yield()
#endif

namespace turbolm {

void Barrier::wait() {
  if (n_ == 1) return;
  // Read the generation before arriving: the last arrival bumps it only after everyone has.
  const unsigned gen = generation_.load(std::memory_order_acquire);
  if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
    count_.store(0, std::memory_order_relaxed);  // visible to whoever sees the new generation
    {
      std::lock_guard<std::mutex> lk(mu_);
      generation_.store(gen + 1, std::memory_order_release);
    }
    cv_.notify_all();
    return;
  }
  for (int i = 0; i < 4000; ++i) {
    if (generation_.load(std::memory_order_acquire) != gen) return;
    TURBOLM_PAUSE();
  }
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != gen; });
}

Communicator::Communicator(int n_ranks) : n_(n_ranks), barrier_(n_ranks), bufs_(n_ranks, nullptr) {}

void Communicator::allreduce_sum(int rank, float* buf, size_t n) {
  if (n_ == 1) return;
  bufs_[rank] = buf;
  barrier_.wait();
  // Rank r owns elements [n·r/N, n·(r+1)/N); the split is in 64-byte units so no two ranks
  // write the same cache line.
  const size_t lines = (n + 15) / 16;
  const size_t b = std::min(n, lines * rank / n_ * 16), e = std::min(n, lines * (rank + 1) / n_ * 16);
  for (size_t i = b; i < e; ++i) {
    float s = bufs_[0][i];
    for (int q = 1; q < n_; ++q) s += bufs_[q][i];
    for (int q = 0; q < n_; ++q) bufs_[q][i] = s;
  }
  barrier_.wait();
}

}  // namespace turbolm
