// Communicator: the tensor-parallel ranks of one model meet here, in shared memory.
//
// Ranks are threads of one process, so an all-reduce is: every rank publishes a pointer to its
// partial buffer, waits at a barrier, then sums one contiguous slice of the element range over
// all ranks (always in rank order 0..N-1, so every run gives bit-identical results) and writes the
// sum back into that slice of every rank's buffer; a second barrier ends the call. Slices are
// disjoint, so no element is read by one rank while another writes it.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <vector>

namespace turbolm {

// A reusable barrier for a fixed number of threads. It spins briefly (ranks normally arrive
// within microseconds of each other) and then sleeps, so oversubscribed cores are not burnt.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait();

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<unsigned> generation_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

class Communicator {
 public:
  explicit Communicator(int n_ranks);
  int size() const { return n_; }

  // Called by every rank with the same n: afterwards each rank's buf[0, n) holds the element-wise
  // sum of all ranks' buffers. With one rank it returns at once.
  void allreduce_sum(int rank, float* buf, size_t n);
  void barrier() { barrier_.wait(); }

 private:
  const int n_;
  Barrier barrier_;
  std::vector<float*> bufs_;  // [n_ranks] published by each rank between the two barriers
};

}  // namespace turbolm
