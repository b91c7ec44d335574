// The production ModelBackend (LlamaModel) and the Engine constructor that loads it. Kept apart
// from engine.cc so that tests linking the engine with a fake model need no model symbols.
#include "engine/engine.h"
#include "engine/model_backend.h"

namespace turbolm {
namespace {

class LlamaBackend final : public ModelBackend {
 public:
  LlamaBackend(const std::string& weights_dir, const ModelOptions& opts) : model_(weights_dir, opts) {}
  const ModelConfig& config() const override { return model_.config(); }
  size_t kv_bytes_per_block() const override { return model_.kv_bytes_per_block(); }
  void allocate_kv(int num_blocks) override { model_.allocate_kv(num_blocks); }
  void forward(const std::vector<ForwardItem>& batch, float* logits) override { model_.forward(batch, logits); }
  void parallel_for(int n, const std::function<void(int, int)>& fn) override { model_.parallel_for(n, fn); }

 private:
  LlamaModel model_;
};

}  // namespace

std::unique_ptr<ModelBackend> make_llama_backend(const std::string& weights_dir, const ModelOptions& opts) {
  return std::make_unique<LlamaBackend>(weights_dir, opts);
}

Engine::Engine(const std::string& weights_dir, const EngineOptions& opts)
    : Engine(make_llama_backend(weights_dir, opts.model), opts) {}

}  // namespace turbolm
