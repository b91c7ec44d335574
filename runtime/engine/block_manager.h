// BlockManager: the KV cache as a pool of `num_blocks` block ids of `block_len` tokens each.
// Pure host logic over integers: the model owns the memory, this owns who may use which block.
//
// Block states (every block is in exactly one):
//   free    -- in the free list, owned by nobody
//   active  -- in the block table of a kWaiting-being-admitted or kRunning sequence
//   cached  -- in the block table of an idle (or waiting) session; evictable, least recently
//              used first. Eviction frees them; the session keeps its tokens and recomputes.
// Transitions: allocate (free -> active), cache (active -> cached), activate (cached -> active),
// deallocate / truncate / evict (any -> free). Only the engine thread calls it.
#pragma once
#include <cstdint>
#include <list>
#include <vector>

#include "engine/sequence.h"

namespace turbolm {

enum class BlockState : uint8_t { kFree = 0, kActive = 1, kCached = 2 };

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_len);

  int num_blocks() const { return (int)state_.size(); }
  int block_len() const { return block_len_; }
  int num_free() const { return (int)free_.size(); }
  int num_cached() const { return num_cached_; }
  int num_active() const { return num_blocks() - num_free() - num_cached_; }
  BlockState state(int block) const { return state_[block]; }

  int blocks_for(int num_tokens) const { return (num_tokens + block_len_ - 1) / block_len_; }
  // Blocks `seq` must add so that its table covers `num_tokens` tokens (0 if it already does).
  int blocks_needed(const Sequence& seq, int num_tokens) const;
  // Whether `n` more blocks can be had: free ones plus evictable (cached) ones.
  bool can_allocate(int n) const { return num_free() + num_cached_ >= n; }
  // Grows seq's (active) table to cover `num_tokens`: free -> active. When the free list runs dry
  // it evicts idle sessions, least recently used first (cached -> free). Caller checks
  // can_allocate first; throws if the pool cannot cover it.
  void allocate(Sequence& seq, int num_tokens);
  // Decode: room for the token at position seq.num_cached (one more block at a block boundary).
  bool can_append(const Sequence& seq) const { return can_allocate(blocks_needed(seq, seq.num_cached + 1)); }
  void may_append(Sequence& seq) { allocate(seq, seq.num_cached + 1); }
  // Releases every block of `seq` (active or cached -> free); seq.num_cached = 0.
  void deallocate(Sequence& seq);
  // Session goes idle: its blocks active -> cached, most recently used.
  void cache(Sequence& seq);
  // Session resumes: its cached blocks cached -> active (no-op if it holds none).
  void activate(Sequence& seq);
  // Rewind: keeps the blocks covering `num_tokens` tokens, frees the rest (-> free);
  // seq.num_cached = min(seq.num_cached, num_tokens).
  void truncate(Sequence& seq, int num_tokens);
  // Evicts the least recently used cached session: its blocks cached -> free, its num_cached = 0.
  // Returns that session, or nullptr when nothing is cached.
  Sequence* evict_one();

  // Throws turbolm::Error if the bookkeeping is inconsistent (counts, states, duplicate ids).
  // `seqs`: every sequence that holds blocks.
  void check_invariants(const std::vector<const Sequence*>& seqs) const;

 private:
  void release(Sequence& seq, size_t keep);  // frees block_table[keep:]

  int block_len_;
  std::vector<int32_t> free_;      // stack of free ids; block 0 is handed out first
  std::vector<BlockState> state_;  // [num_blocks]
  int num_cached_ = 0;
  std::list<Sequence*> lru_;       // sessions whose blocks are cached, least recently used first
};

}  // namespace turbolm
