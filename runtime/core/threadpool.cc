#include "threadpool.h"

#include <sched.h>

#include <chrono>
#include <fstream>
#include <set>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TURBOLM_PAUSE() _mm_pause()
#else
#define TURBOLM_PAUSE() std::this_thread::yield()
#endif

namespace turbolm {
namespace {

constexpr auto kSpin = std::chrono::microseconds(50);     // idle worker: spin, then sleep
constexpr auto kWaitSpin = std::chrono::microseconds(10);  // caller waiting on a worker's range

// Range i of [0, n) split into `parts` near-equal pieces.
inline std::pair<int, int> split(int n, int parts, int i) {
  const int base = n / parts, extra = n % parts;
  const int begin = i * base + (i < extra ? i : extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_ranges() {
  uint64_t c = claim_.load(std::memory_order_acquire);
  for (;;) {
    const int parts = (int)(c >> 32), r = (int)(uint32_t)c;
    if (r >= parts) return;
    if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    auto [begin, end] = split(job_n_, parts, r);
    try {
      (*job_)(r, begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
    done_.fetch_add(1, std::memory_order_acq_rel);
    c = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    // Spin briefly for the next loop, then sleep.
    uint64_t gen = generation_.load(std::memory_order_acquire);
    if (gen == seen) {
      const auto deadline = std::chrono::steady_clock::now() + kSpin;
      int spins = 0;
      while ((gen = generation_.load(std::memory_order_acquire)) == seen && !stop_.load(std::memory_order_relaxed)) {
        TURBOLM_PAUSE();
        if (++spins == 16) {
          spins = 0;
          if (std::chrono::steady_clock::now() > deadline) break;
        }
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        sleepers_.fetch_add(1);  // seq_cst: pairs with the caller's generation bump
        wake_.wait(lock, [&] { return generation_.load() != seen || stop_.load(); });
        sleepers_.fetch_sub(1);
        gen = generation_.load(std::memory_order_acquire);
      }
    }
    if (stop_.load()) return;
    seen = gen;
    run_ranges();
  }
}

void ThreadPool::parallel_for_indexed(int n, const std::function<void(int, int, int)>& fn) {
  if (n <= 0) return;
  bool expected = false;
  if (n_threads_ == 1 || n == 1 || !busy_.compare_exchange_strong(expected, true)) {
    fn(0, 0, n);  // single thread, trivial loop, or nested/concurrent call: run serially
    return;
  }
  const int parts = n < n_threads_ ? n : n_threads_;
  job_ = &fn;
  job_n_ = n;
  error_ = nullptr;
  done_.store(0, std::memory_order_relaxed);
  claim_.store((uint64_t)parts << 32, std::memory_order_release);  // publishes job_, job_n_
  generation_.fetch_add(1);  // seq_cst: pairs with a worker's sleepers_ increment
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    wake_.notify_all();
  }
  run_ranges();  // range 0, then whatever no worker has started
  // A worker is still inside a range it claimed: spin ~10 us, then yield (it may be waiting
  // for this core on an oversubscribed machine).
  const auto spin_until = std::chrono::steady_clock::now() + kWaitSpin;
  for (int spins = 0; done_.load(std::memory_order_acquire) != parts;) {
    if (spins < 0) {
      std::this_thread::yield();
      continue;
    }
    TURBOLM_PAUSE();
    if (++spins == 16) spins = std::chrono::steady_clock::now() > spin_until ? -1 : 0;
  }
  std::exception_ptr err;
  {
    std::lock_guard<std::mutex> lock(mu_);
    err = std::exchange(error_, nullptr);
  }
  job_ = nullptr;
  busy_.store(false, std::memory_order_release);
  if (err) std::rethrow_exception(err);
}

void ThreadPool::parallel_for(int n, const std::function<void(int, int)>& fn) {
  parallel_for_indexed(n, [&fn](int, int begin, int end) { fn(begin, end); });
}

int ThreadPool::physical_cores() {
  int fallback = (int)std::thread::hardware_concurrency();
  if (fallback < 1) fallback = 1;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return fallback;
  std::set<std::pair<int, int>> cores;  // (package, core)
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream fc(dir + "core_id"), fp(dir + "physical_package_id");
    int core = -1, pkg = -1;
    if (!(fc >> core) || !(fp >> pkg)) return CPU_COUNT(&set);  // no topology: count cpus
    cores.insert({pkg, core});
  }
  return cores.empty() ? fallback : (int)cores.size();
}

}  // namespace turbolm
