// LlamaModel: the LLaMA-family forward pass over one step's batch, on `tp` rank threads.
//
// Ownership: the model owns its weights (loaded from a workspace, repacked for the kernels) and
// the KV block pool of every rank. It keeps no per-sequence state: the engine passes each
// sequence's block table and position every step. forward() is called from one thread (the
// engine thread) at a time; inside it the ranks run on their own threads and meet in the
// communicator after wo and w2 (sum of partial results).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"

namespace turbolm {

enum class LogitsMode : int { kNone = 0, kLast = 1, kAll = 2 };

// One sequence's slice of a step.
struct ForwardItem {
  const int32_t* tokens = nullptr;  // [n_tokens] tokens computed this step
  int n_tokens = 0;
  int start_pos = 0;                     // tokens of this sequence already in the KV cache
  const int32_t* block_table = nullptr;  // blocks covering positions [0, start_pos + n_tokens)
  LogitsMode logits = LogitsMode::kLast;
};

struct ModelOptions {
  int tp = 0;           // 0: the workspace's tensor_para_size; N: run at N ranks (a tp=1 workspace is sliced)
  int num_threads = 0;  // total compute threads over all ranks; 0: the machine's cores
  bool reference_kernels = false;  // run the scalar reference kernel table (tests, debugging numerics)
  std::string act_type;            // "": the workspace's act_type; "float" | "int8" override it
};

class LlamaModel {
 public:
  // Loads `weights_dir` (a workspace's triton_models/weights). Throws turbolm::Error naming the
  // file on a missing file, a file of the wrong size, or an unsupported weight_type.
  LlamaModel(const std::string& weights_dir, const ModelOptions& opts);
  ~LlamaModel();

  const ModelConfig& config() const;
  int tp() const;

  // Bytes one KV block takes on all ranks together (for sizing the pool).
  size_t kv_bytes_per_block() const;
  // (Re)allocates every rank's pool to `num_blocks` blocks. Block ids are shared by all ranks.
  void allocate_kv(int num_blocks);
  int num_kv_blocks() const;

  // Runs the batch; writes logits rows in batch order: 1 row for kLast, n_tokens rows for
  // kAll, none for kNone. logits: [rows, vocab_size] fp32.
  void forward(const std::vector<ForwardItem>& batch, float* logits);

  // Runs fn over ranges of [0, n) on rank 0's thread pool (ThreadPool::parallel_for), for work
  // between two forwards on the same calling thread, e.g. sampling the step's rows.
  void parallel_for(int n, const std::function<void(int begin, int end)>& fn);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace turbolm
