// ThreadPool: persistent workers that share out index ranges of one loop at a time.
//
// Threading contract
// - A pool of size() == n threads is the calling thread plus n - 1 workers it owns; workers
//   live until the pool is destroyed.
// - parallel_for(n, fn) splits [0, n) into at most size() contiguous, non-empty ranges of
//   near-equal length and calls fn(begin, end) once per range; every index is covered exactly
//   once. It returns when every range is done; writes made by fn on any thread are then visible
//   to the caller. n <= 0 calls nothing. Ranges with fewer indices than threads leave threads idle.
// - Ranges are claimed, not assigned: the caller and the workers take the next unstarted range
//   from an atomic counter, so the caller normally runs range 0 and worker i range i, but a
//   caller that finishes first runs the ranges no worker has started. On a shared, oversubscribed
//   machine a descheduled worker then costs nothing instead of a scheduler time slice.
// - parallel_for_indexed(n, fn) is the same but also passes the range's index in [0, size()),
//   so fn may use per-index scratch (an index runs on one thread at a time).
// - One calling thread at a time: the owner (e.g. the engine thread of one TP rank) calls it.
//   A call made while the pool is busy — nested from inside fn, or from another thread —
//   runs the whole loop serially on the calling thread (index 0) instead of deadlocking.
// - An exception thrown by fn is rethrown on the caller (the first one; the rest are dropped)
//   after every range has finished.
// - Idle workers spin for ~50 us waiting for the next loop (the decode step issues hundreds
//   of small loops per token, so wake-up must cost microseconds), then sleep on a condition
//   variable; the next loop wakes them (tens of microseconds). A caller waiting for a worker's
//   range spins ~10 us, then yields its core (the worker may be waiting for it).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace turbolm {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads /* including the caller; clamped to >= 1 */);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  void parallel_for(int n, const std::function<void(int begin, int end)>& fn);
  void parallel_for_indexed(int n, const std::function<void(int thread, int begin, int end)>& fn);

  // Physical cores available to this process (hyper-thread siblings counted once, affinity
  // mask respected); falls back to std::thread::hardware_concurrency(), and is at least 1.
  static int physical_cores();

 private:
  void worker_loop();
  void run_ranges();  // claims and runs ranges of the current loop until none is left

  int n_threads_;
  std::vector<std::thread> workers_;
  // The current loop: written by the caller before it stores claim_ (release), read by a thread
  // only after it has claimed a range from claim_ (acquire), so a late worker sees a whole loop.
  const std::function<void(int, int, int)>* job_ = nullptr;
  int job_n_ = 0;
  // (parts << 32) | next unclaimed range, one word so a claim never pairs one loop's counter
  // with another loop's range count.
  std::atomic<uint64_t> claim_{0};
  std::atomic<int> done_{0};  // ranges finished
  std::atomic<uint64_t> generation_{0};  // bumped per loop: wakes the workers
  std::atomic<int> sleepers_{0};  // workers blocked (or about to block) on wake_
  std::atomic<bool> busy_{false};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable wake_;
  std::exception_ptr error_;  // guarded by mu_
};

}  // namespace turbolm
