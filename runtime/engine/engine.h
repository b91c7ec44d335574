// Engine: the persistent batch. One engine thread owns the Scheduler, BlockManager, Sampler and
// the LlamaModel; callers on any thread submit requests and read their Streams. See
// runtime/engine/README.md for the threads, the states of a sequence and the invariants.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/request.h"
#include "model/llama.h"

namespace turbolm {

struct EngineOptions {
  ModelOptions model;
  int max_batch_size = 0;          // 0: config.ini's
  int session_len = 0;             // 0: config.ini's
  int max_context_token_num = 0;   // token budget per step; 0: config.ini's (or a CPU default)
  float cache_max_entry_count = -1;  // < 0: config.ini's; < 1 fraction of available memory; >= 1 blocks
};

class ModelBackend;  // engine/model_backend.h

class Engine {
 public:
  Engine(const std::string& weights_dir, const EngineOptions& opts);
  // Runs over any model behind ModelBackend (tests use a fake one). opts.model is unused here.
  Engine(std::unique_ptr<ModelBackend> model, const EngineOptions& opts);
  ~Engine();  // stops the engine thread; unfinished requests finish as kCancelled

  const ModelConfig& config() const;

  // Queues a request; never blocks on the model. Invalid requests (ids out of range, negative
  // output length, too long for the session) finish at once with kError and a reason.
  std::shared_ptr<Stream> submit(const Request& req);
  // Cancels the session's running request (finish kCancelled); its history up to then is kept
  // unless `end` is set, which also frees the session's blocks.
  void stop(uint64_t session_id, bool end = false);
  // Frees a session's cached blocks.
  void end(uint64_t session_id);

  // Perplexity of each sequence (exp of the mean next-token NLL), computed by the runtime.
  std::vector<double> get_ppl(const std::vector<std::vector<int32_t>>& input_ids);

  struct Stats {
    int num_blocks, free_blocks, cached_blocks, running, waiting;
    // added: what the engine settled on (after defaults), and the work done so far
    int block_len = 0, max_batch_size = 0, max_num_tokens = 0, session_len = 0;
    long long steps = 0, tokens_computed = 0, tokens_generated = 0, preemptions = 0;
    int pooled_blocks = 0;             // findable by their tokens, held by nobody (prefix cache)
    long long prefix_cached_tokens = 0;  // tokens whose K/V admission took from the prefix cache
  };
  Stats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace turbolm
