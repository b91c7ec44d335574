// ModelBackend: what the engine needs from a model. LlamaModel serves it in production
// (llama_backend.cc); tests plug in a fake that checks block tables and K/V contents, so the
// whole engine loop -- threads, scheduling, preemption, eviction -- is tested without weights.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "model/llama.h"

namespace turbolm {

class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual size_t kv_bytes_per_block() const = 0;
  virtual void allocate_kv(int num_blocks) = 0;
  // Same contract as LlamaModel::forward.
  virtual void forward(const std::vector<ForwardItem>& batch, float* logits) = 0;
  // Same contract as LlamaModel::parallel_for; a backend without threads runs fn(0, n).
  virtual void parallel_for(int n, const std::function<void(int begin, int end)>& fn) {
    if (n > 0) fn(0, n);
  }
};

// Loads a workspace's weights into a LlamaModel behind the ModelBackend interface.
std::unique_ptr<ModelBackend> make_llama_backend(const std::string& weights_dir, const ModelOptions& opts);

}  // namespace turbolm
