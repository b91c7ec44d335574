// ThreadPool: every index covered exactly once, ranges contiguous, repeated and nested calls,
// exceptions, sizes 1..3, dispatch overhead.
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "core/threadpool.h"

using turbolm::ThreadPool;

static void check_coverage(ThreadPool& pool, int n) {
  std::vector<std::atomic<int>> hits(n > 0 ? n : 1);
  for (auto& h : hits) h = 0;
  std::atomic<int> calls{0};
  pool.parallel_for(n, [&](int b, int e) {
    CHECK(b < e);
    CHECK(b >= 0 && e <= n);
    ++calls;
    for (int i = b; i < e; ++i) hits[i]++;
  });
  for (int i = 0; i < n; ++i) CHECK_EQ(hits[i].load(), 1);
  CHECK(calls.load() <= pool.size());
  if (n <= 0) CHECK_EQ(calls.load(), 0);
}

TEST(coverage_sizes_1_2_3) {
  for (int size : {1, 2, 3}) {
    ThreadPool pool(size);
    CHECK_EQ(pool.size(), size);
    for (int n : {0, 1, 2, 3, 5, 30, 1000, 1537}) check_coverage(pool, n);
  }
}

TEST(size_clamped) {
  ThreadPool pool(0);
  CHECK_EQ(pool.size(), 1);
  check_coverage(pool, 10);
}

TEST(repeated_calls) {
  ThreadPool pool(2);
  std::vector<int> data(977, 0);
  for (int it = 0; it < 20000; ++it)
    pool.parallel_for((int)data.size(), [&](int b, int e) { for (int i = b; i < e; ++i) data[i]++; });
  for (int v : data) CHECK_EQ(v, 20000);
}

TEST(repeated_calls_with_sleeps) {  // workers go to sleep between calls and must wake up
  ThreadPool pool(3);
  std::vector<int> data(100, 0);
  for (int it = 0; it < 20; ++it) {
    std::this_thread::sleep_for(std::chrono::microseconds(it % 2 ? 200 : 2000));
    pool.parallel_for((int)data.size(), [&](int b, int e) { for (int i = b; i < e; ++i) data[i]++; });
  }
  for (int v : data) CHECK_EQ(v, 20);
}

TEST(indexed_slots_unique) {
  ThreadPool pool(2);
  for (int it = 0; it < 100; ++it) {
    std::atomic<int> used[2] = {{0}, {0}};
    pool.parallel_for_indexed(10, [&](int t, int b, int e) {
      CHECK(t >= 0 && t < 2);
      used[t]++;
    });
    CHECK_EQ(used[0].load(), 1);
    CHECK_EQ(used[1].load(), 1);
  }
}

TEST(nested_runs_serially) {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> hits(64);
  for (auto& h : hits) h = 0;
  pool.parallel_for(8, [&](int b, int e) {
    for (int i = b; i < e; ++i)
      pool.parallel_for(8, [&](int b2, int e2) { for (int j = b2; j < e2; ++j) hits[i * 8 + j]++; });
  });
  for (auto& h : hits) CHECK_EQ(h.load(), 1);
}

TEST(exception_propagates) {
  ThreadPool pool(2);
  CHECK_THROWS(pool.parallel_for(100, [&](int b, int e) { if (e == 100) throw std::runtime_error("x"); }));
  CHECK_THROWS(pool.parallel_for(100, [&](int b, int e) { if (b == 0) throw std::runtime_error("x"); }));
  check_coverage(pool, 100);  // still usable
}

TEST(physical_cores_positive) { CHECK(ThreadPool::physical_cores() >= 1); }

TEST(dispatch_overhead) {
  ThreadPool pool(2);
  std::atomic<int> sink{0};
  const int iters = 20000;
  auto t0 = std::chrono::steady_clock::now();
  for (int it = 0; it < iters; ++it) pool.parallel_for(2, [&](int b, int e) { sink += e - b; });
  double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / iters;
  std::printf("  parallel_for dispatch: %.2f us/call (2 threads)\n", us);
  CHECK_EQ(sink.load(), 2 * iters);
}

int main() { return check::run_all(); }
