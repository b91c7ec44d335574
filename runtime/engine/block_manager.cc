#include "engine/block_manager.h"

#include <algorithm>

#include "core/error.h"

namespace turbolm {

BlockManager::BlockManager(int num_blocks, int block_len) : block_len_(block_len) {
  TURBOLM_CHECK(num_blocks > 0 && block_len > 0, "BlockManager: need num_blocks > 0 and block_len > 0, got ",
                num_blocks, " and ", block_len);
  state_.assign(num_blocks, BlockState::kFree);
  free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

int BlockManager::blocks_needed(const Sequence& seq, int num_tokens) const {
  return std::max(0, blocks_for(num_tokens) - (int)seq.block_table.size());
}

void BlockManager::allocate(Sequence& seq, int num_tokens) {
  int need = blocks_needed(seq, num_tokens);
  if (need == 0) return;
  TURBOLM_CHECK(can_allocate(need), "BlockManager: ", need, " blocks wanted, ", num_free(), " free and ",
                num_cached_, " cached of ", num_blocks());
  TURBOLM_CHECK(seq.block_table.empty() || state_[seq.block_table[0]] == BlockState::kActive,
                "BlockManager: allocate on a sequence whose blocks are not active");
  while (num_free() < need) evict_one();
  for (int i = 0; i < need; ++i) {
    int32_t b = free_.back();
    free_.pop_back();
    state_[b] = BlockState::kActive;  // free -> active
    seq.block_table.push_back(b);
  }
}

void BlockManager::release(Sequence& seq, size_t keep) {
  for (size_t i = keep; i < seq.block_table.size(); ++i) {
    int32_t b = seq.block_table[i];
    if (state_[b] == BlockState::kCached) --num_cached_;
    state_[b] = BlockState::kFree;  // active / cached -> free
    free_.push_back(b);
  }
  seq.block_table.resize(std::min(keep, seq.block_table.size()));
  if (seq.block_table.empty()) lru_.remove(&seq);
}

void BlockManager::deallocate(Sequence& seq) {
  release(seq, 0);
  lru_.remove(&seq);
  seq.num_cached = 0;
}

void BlockManager::truncate(Sequence& seq, int num_tokens) {
  release(seq, (size_t)blocks_for(num_tokens));
  seq.num_cached = std::min(seq.num_cached, num_tokens);
}

void BlockManager::cache(Sequence& seq) {
  if (seq.block_table.empty()) return;
  for (int32_t b : seq.block_table) {
    if (state_[b] == BlockState::kActive) {
      state_[b] = BlockState::kCached;  // active -> cached
      ++num_cached_;
    }
  }
  lru_.remove(&seq);
  lru_.push_back(&seq);
}

void BlockManager::activate(Sequence& seq) {
  for (int32_t b : seq.block_table) {
    if (state_[b] == BlockState::kCached) {
      state_[b] = BlockState::kActive;  // cached -> active
      --num_cached_;
    }
  }
  lru_.remove(&seq);
}

Sequence* BlockManager::evict_one() {
  if (lru_.empty()) return nullptr;
  Sequence* victim = lru_.front();
  deallocate(*victim);  // cached -> free; the session keeps its tokens and recomputes on resume
  return victim;
}

void BlockManager::check_invariants(const std::vector<const Sequence*>& seqs) const {
  std::vector<int> owner(state_.size(), -1);
  int active = 0, cached = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& s = *seqs[i];
    TURBOLM_CHECK((int)s.block_table.size() >= blocks_for(s.num_cached), "invariant: session ", s.session_id,
                  " has ", s.num_cached, " cached tokens but only ", s.block_table.size(), " blocks");
    for (int32_t b : s.block_table) {
      TURBOLM_CHECK(b >= 0 && b < num_blocks(), "invariant: block id ", b, " out of range");
      TURBOLM_CHECK(owner[b] < 0, "invariant: block ", b, " held by two sequences");
      owner[b] = (int)i;
      TURBOLM_CHECK(state_[b] != BlockState::kFree, "invariant: block ", b, " in a table but free");
      bool want_active = s.status == SequenceStatus::kRunning;
      if (want_active) TURBOLM_CHECK(state_[b] == BlockState::kActive, "invariant: running seq holds a non-active block");
      else TURBOLM_CHECK(state_[b] == BlockState::kCached, "invariant: idle/waiting seq holds a non-cached block");
      (state_[b] == BlockState::kActive ? active : cached) += 1;
    }
  }
  TURBOLM_CHECK(cached == num_cached_, "invariant: ", cached, " cached blocks in tables, counter says ", num_cached_);
  TURBOLM_CHECK(active + cached + num_free() == num_blocks(), "invariant: active ", active, " + cached ", cached,
                " + free ", num_free(), " != ", num_blocks());
  for (int32_t b : free_) TURBOLM_CHECK(state_[b] == BlockState::kFree && owner[b] < 0, "invariant: free block ", b, " in use");
  int lru_blocks = 0;
  for (const Sequence* s : lru_) lru_blocks += (int)s->block_table.size();
  TURBOLM_CHECK(lru_blocks == num_cached_, "invariant: LRU list holds ", lru_blocks, " blocks, counter says ", num_cached_);
}

}  // namespace turbolm
