// ThreadPool: persistent workers that share out index ranges of one loop at a time.
//
// Threading contract
// - A pool of size() == n threads is the calling thread plus n - 1 workers it owns; workers
//   live until the pool is destroyed.
// - parallel_for(n, fn) splits [0, n) into at most size() contiguous, non-empty ranges of
//   near-equal length (static partition: range i goes to thread i, i = 0 is the caller) and
//   calls fn(begin, end) once per range; every index is covered exactly once. It returns
//   when every range is done; writes made by fn on any thread are then visible to the caller.
//   n <= 0 calls nothing. Ranges with fewer indices than threads leave threads idle.
// - parallel_for_indexed(n, fn) is the same but also passes the thread's slot in
//   [0, size()), so fn may use per-thread scratch (slot i is used by one thread per call).
// - One calling thread at a time: the owner (e.g. the engine thread of one TP rank) calls it.
//   A call made while the pool is busy — nested from inside fn, or from another thread —
//   runs the whole loop serially on the calling thread (slot 0) instead of deadlocking.
// - An exception thrown by fn is rethrown on the caller (the first one; the rest are dropped)
//   after every range has finished.
// - Idle workers spin for ~50 us waiting for the next loop (the decode step issues hundreds
//   of small loops per token, so wake-up must cost microseconds), then sleep on a condition
//   variable; the next loop wakes them (tens of microseconds).
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
  void worker_loop(int slot);
  void run_range(int slot);

  int n_threads_;
  std::vector<std::thread> workers_;
  // The current loop, published by bumping generation_.
  const std::function<void(int, int, int)>* job_ = nullptr;
  int job_n_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};   // workers still running the current loop
  std::atomic<int> sleepers_{0};  // workers blocked (or about to block) on wake_
  std::atomic<bool> busy_{false};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable wake_;
  std::exception_ptr error_;  // guarded by mu_
};

}  // namespace turbolm
