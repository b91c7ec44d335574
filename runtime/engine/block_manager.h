// BlockManager: the KV cache as a pool of `num_blocks` block ids of `block_len` tokens each.
// Pure host logic over integers: the model owns the memory, this owns who may use which block.
//
// A block may be in several block tables at once (prefix caching: sequences whose histories
// start with the same tokens share the blocks of that prefix), so each block counts its holders:
// `ref` (tables that hold it) and `active` (of those, the tables of admitted / running sequences).
// Block states (every block is in exactly one):
//   free    -- ref 0, no content anyone can find; in the free list
//   pooled  -- ref 0 but FULL and HASHED: its tokens are known, so a later sequence whose history
//              starts with them reuses it; evictable, least recently released first
//   active  -- active > 0: in the table of an admitted or running sequence
//   cached  -- ref > 0, active 0: only idle (or waiting) sessions hold it; evictable by evicting
//              those sessions, least recently used first (they keep their tokens and recompute)
// Hashes: block i of a table is named by hash(hash of block i-1, its block_len tokens); a full
// block is registered under its hash once its K/V is computed (register_full), and found again by
// match_prefix. Blocks are immutable once hashed: a sequence only writes positions past its own
// num_cached, and truncate() drops a hashed block rather than rewrite inside it.
// Transitions: allocate (free/pooled -> active), cache / activate (active <-> cached for one
// table), deallocate / truncate / evict (a table lets go: ref 0 -> pooled if hashed, else free).
// Only the engine thread calls it.
#pragma once
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "engine/sequence.h"

namespace turbolm {

enum class BlockState : uint8_t { kFree = 0, kActive = 1, kCached = 2, kPooled = 3 };

class BlockManager {
 public:
  // prefix_caching: register and reuse full blocks across sequences (off: a block is only ever
  // in one table, as before prefix caching).
  BlockManager(int num_blocks, int block_len, bool prefix_caching = false);

  int num_blocks() const { return (int)ref_.size(); }
  int block_len() const { return block_len_; }
  int num_free() const { return (int)free_.size(); }
  int num_pooled() const { return (int)pool_.size(); }
  int num_cached() const { return num_cached_; }  // held by idle sessions only
  int num_active() const { return num_blocks() - num_free() - num_pooled() - num_cached_; }
  BlockState state(int block) const;
  bool prefix_caching() const { return prefix_caching_; }
  int refs(int block) const { return ref_[block]; }

  int blocks_for(int num_tokens) const { return (num_tokens + block_len_ - 1) / block_len_; }
  // Blocks `seq` must add so that its table covers `num_tokens` tokens (0 if it already does).
  int blocks_needed(const Sequence& seq, int num_tokens) const;
  // Whether `n` more blocks can be had: free, pooled, and those only idle sessions hold.
  bool can_allocate(int n) const { return num_free() + num_pooled() + num_cached_ >= n; }
  // Grows seq's (active) table to cover `num_tokens`: free -> active, else the least recently
  // pooled block (its hash forgotten), else blocks of evicted idle sessions, least recently used
  // first. Caller checks can_allocate first; throws if the pool cannot cover it.
  void allocate(Sequence& seq, int num_tokens);
  // Decode: room for the token at position seq.num_cached (one more block at a block boundary).
  bool can_append(const Sequence& seq) const { return can_allocate(blocks_needed(seq, seq.num_cached + 1)); }
  void may_append(Sequence& seq) { allocate(seq, seq.num_cached + 1); }
  // seq lets go of every block (-> pooled if hashed and nobody else holds it, else free, or stays
  // with its other holders); seq.num_cached = 0.
  void deallocate(Sequence& seq);
  // Session goes idle: its table's blocks count it as idle (active -> cached when it was the
  // last active holder); the session becomes the most recently used.
  void cache(Sequence& seq);
  // Session resumes: its table's blocks count it as active again.
  void activate(Sequence& seq);
  // Rewind: keeps the blocks covering `num_tokens` tokens -- but not a hashed block that would be
  // written inside (it is shared or findable: dropped, its tokens recomputed) -- lets go of the
  // rest; seq.num_cached = min(seq.num_cached, tokens the kept blocks cover).
  void truncate(Sequence& seq, int num_tokens);
  // Evicts the least recently used idle session: it lets go of its blocks, num_cached = 0.
  // Returns that session, or nullptr when no idle session holds blocks.
  Sequence* evict_one();

  // Prefix caching (no-ops when off). match_prefix: for a sequence holding no blocks, takes the
  // longest run of registered blocks that its tokens start with -- leaving at least one token to
  // compute -- into its table (ref +1 each, active) and sets num_cached; returns the tokens
  // reused. register_full: registers the table's full, computed blocks not registered yet.
  int match_prefix(Sequence& seq);
  void register_full(Sequence& seq);

  // Throws turbolm::Error if the bookkeeping is inconsistent (counts, states, refs, hashes).
  // `seqs`: every sequence that holds blocks.
  void check_invariants(const std::vector<const Sequence*>& seqs) const;

 private:
  void let_go(int32_t block, bool was_active);  // one table releases `block`
  void take(int32_t block);                     // a table of an active sequence takes `block`
  void release(Sequence& seq, size_t keep);     // seq lets go of block_table[keep:]
  int32_t pop_free_or_pooled();                 // a block with no holder and no hash, or -1
  uint64_t chain_hash(uint64_t prev, const int32_t* tokens) const;
  bool same_tokens(int32_t block, const int32_t* tokens) const;

  int block_len_;
  bool prefix_caching_;
  std::vector<int32_t> free_;  // stack of free ids; block 0 is handed out first
  std::vector<int> ref_;       // [num_blocks] tables holding the block
  std::vector<int> active_;    // [num_blocks] of those, tables of admitted / running sequences
  int num_cached_ = 0;         // blocks with ref > 0 and active == 0
  std::list<Sequence*> lru_;   // idle sessions holding blocks, least recently used first

  // Prefix cache.
  std::vector<uint64_t> hash_;                     // [num_blocks] 0: not registered
  std::vector<std::vector<int32_t>> hashed_tokens_;  // [num_blocks] a registered block's tokens (collision check)
  std::unordered_map<uint64_t, int32_t> by_hash_;  // hash -> block
  std::list<int32_t> pool_;                        // pooled blocks, least recently released first
  std::vector<std::list<int32_t>::iterator> pool_pos_;  // [num_blocks] valid while pooled
  std::vector<uint8_t> in_pool_;                   // [num_blocks]
};

}  // namespace turbolm
