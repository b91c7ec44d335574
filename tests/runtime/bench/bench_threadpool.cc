// ThreadPool dispatch overhead: the wall time of one parallel_for over trivial work, as the
// model issues ~10 per layer x 30 layers per decoded token. Reports the median and the minimum
// over batches of 1000 calls (the box is shared: the minimum is the unloaded estimate), for
// back-to-back calls and for calls spaced by ~20 us of single-thread work (a small kernel on
// the caller between loops, as in a decode step).
// Usage: bench_threadpool [threads]   (default 2)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/threadpool.h"

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  turbolm::ThreadPool pool(threads);
  std::atomic<int> sink{0};
  auto body = [&](int b, int e) { sink.fetch_add(e - b, std::memory_order_relaxed); };
  for (int gap_us : {0, 20}) {
    std::vector<double> per_call;
    for (int batch = 0; batch < 30; ++batch) {
      double total = 0;
      for (int i = 0; i < 1000; ++i) {
        if (gap_us) {
          const auto until = Clock::now() + std::chrono::microseconds(gap_us);
          while (Clock::now() < until) {}
        }
        const auto t0 = Clock::now();
        pool.parallel_for(64, body);
        total += std::chrono::duration<double>(Clock::now() - t0).count();
      }
      per_call.push_back(total / 1000);
    }
    std::sort(per_call.begin(), per_call.end());
    std::printf("%d threads, gap %2d us: parallel_for median %.2f us, min %.2f us (per call, batches of 1000)\n",
                threads, gap_us, per_call[per_call.size() / 2] * 1e6, per_call[0] * 1e6);
  }
  return sink.load() == 0;
}
