#include "engine/block_manager.h"

#include <algorithm>

#include "core/error.h"

namespace turbolm {

BlockManager::BlockManager(int num_blocks, int block_len, bool prefix_caching)
    : block_len_(block_len), prefix_caching_(prefix_caching) {
  TURBOLM_CHECK(num_blocks > 0 && block_len > 0, "BlockManager: need num_blocks > 0 and block_len > 0, got ",
                num_blocks, " and ", block_len);
  ref_.assign(num_blocks, 0);
  active_.assign(num_blocks, 0);
  hash_.assign(num_blocks, 0);
  hashed_tokens_.resize(num_blocks);
  pool_pos_.resize(num_blocks);
  in_pool_.assign(num_blocks, 0);
  free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

BlockState BlockManager::state(int block) const {
  if (active_[block] > 0) return BlockState::kActive;
  if (ref_[block] > 0) return BlockState::kCached;
  return in_pool_[block] ? BlockState::kPooled : BlockState::kFree;
}

int BlockManager::blocks_needed(const Sequence& seq, int num_tokens) const {
  return std::max(0, blocks_for(num_tokens) - (int)seq.block_table.size());
}

int32_t BlockManager::pop_free_or_pooled() {
  if (!free_.empty()) {
    int32_t b = free_.back();
    free_.pop_back();
    return b;
  }
  if (!pool_.empty()) {  // the least recently released pooled block: forget what it held
    int32_t b = pool_.front();
    pool_.pop_front();
    in_pool_[b] = 0;
    by_hash_.erase(hash_[b]);
    hash_[b] = 0;
    hashed_tokens_[b].clear();
    return b;
  }
  return -1;
}

void BlockManager::take(int32_t b) {
  if (in_pool_[b]) {  // pooled -> active
    pool_.erase(pool_pos_[b]);
    in_pool_[b] = 0;
  } else if (ref_[b] > 0 && active_[b] == 0) {
    --num_cached_;  // cached -> active
  }
  ++ref_[b];
  ++active_[b];
}

void BlockManager::let_go(int32_t b, bool was_active) {
  const bool was_cached = ref_[b] > 0 && active_[b] == 0;
  --ref_[b];
  if (was_active) --active_[b];
  const bool now_cached = ref_[b] > 0 && active_[b] == 0;
  num_cached_ += (int)now_cached - (int)was_cached;
  if (ref_[b] > 0) return;
  if (hash_[b] != 0) {  // findable: pooled, most recently released last
    in_pool_[b] = 1;
    pool_pos_[b] = pool_.insert(pool_.end(), b);
  } else {
    free_.push_back(b);
  }
}

void BlockManager::allocate(Sequence& seq, int num_tokens) {
  int need = blocks_needed(seq, num_tokens);
  if (need == 0) return;
  TURBOLM_CHECK(can_allocate(need), "BlockManager: ", need, " blocks wanted, ", num_free(), " free, ", num_pooled(),
                " pooled and ", num_cached_, " cached of ", num_blocks());
  TURBOLM_CHECK(seq.block_table.empty() || seq.blocks_active,
                "BlockManager: allocate on a sequence whose blocks are not active");
  seq.blocks_active = true;  // (an active table is never in the LRU list: nothing to remove)
  for (int i = 0; i < need; ++i) {
    int32_t b = pop_free_or_pooled();
    while (b < 0) {
      TURBOLM_CHECK(evict_one() != nullptr, "BlockManager: nothing left to evict for ", need - i, " blocks");
      b = pop_free_or_pooled();
    }
    ++ref_[b];
    ++active_[b];  // free -> active
    seq.block_table.push_back(b);
  }
}

void BlockManager::release(Sequence& seq, size_t keep) {
  const bool active = seq.blocks_active;
  for (size_t i = keep; i < seq.block_table.size(); ++i) let_go(seq.block_table[i], active);
  seq.block_table.resize(std::min(keep, seq.block_table.size()));
  if (seq.block_hashes.size() > seq.block_table.size()) seq.block_hashes.resize(seq.block_table.size());
  if (seq.block_table.empty()) {
    lru_.remove(&seq);
    seq.blocks_active = false;
  }
}

void BlockManager::deallocate(Sequence& seq) {
  release(seq, 0);  // an emptied table also leaves the LRU list
  seq.num_cached = 0;
}

void BlockManager::truncate(Sequence& seq, int num_tokens) {
  size_t keep = (size_t)blocks_for(num_tokens);
  // The block `num_tokens` falls inside will be written from there on: never a hashed one.
  if (num_tokens % block_len_ != 0 && keep > 0 && keep <= seq.block_table.size() &&
      hash_[seq.block_table[keep - 1]] != 0)
    --keep;
  release(seq, keep);
  seq.num_cached = std::min(seq.num_cached, std::min(num_tokens, (int)keep * block_len_));
}

void BlockManager::cache(Sequence& seq) {
  if (seq.block_table.empty()) return;
  if (seq.blocks_active) {
    for (int32_t b : seq.block_table) {
      --active_[b];
      if (active_[b] == 0) ++num_cached_;  // active -> cached
    }
    seq.blocks_active = false;
  }
  lru_.remove(&seq);
  lru_.push_back(&seq);
}

void BlockManager::activate(Sequence& seq) {
  if (!seq.blocks_active) {
    for (int32_t b : seq.block_table) {
      if (active_[b] == 0) --num_cached_;  // cached -> active
      ++active_[b];
    }
    seq.blocks_active = !seq.block_table.empty();
  }
  lru_.remove(&seq);
}

Sequence* BlockManager::evict_one() {
  if (lru_.empty()) return nullptr;
  Sequence* victim = lru_.front();
  deallocate(*victim);  // the session keeps its tokens and recomputes (or re-matches) on resume
  return victim;
}

// ---------------------------------------------------------------- prefix cache

uint64_t BlockManager::chain_hash(uint64_t prev, const int32_t* tokens) const {
  // FNV-1a over (prev, tokens) with a final avalanche (splitmix64); never 0 ("not hashed").
  uint64_t h = 1469598103934665603ull ^ prev;
  for (int i = 0; i < block_len_; ++i) h = (h ^ (uint64_t)(uint32_t)tokens[i]) * 1099511628211ull;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h ? h : 1;
}

bool BlockManager::same_tokens(int32_t b, const int32_t* tokens) const {
  return std::equal(hashed_tokens_[b].begin(), hashed_tokens_[b].end(), tokens);
}

int BlockManager::match_prefix(Sequence& seq) {
  if (!prefix_caching_ || !seq.block_table.empty()) return 0;
  const int usable = ((int)seq.tokens.size() - 1) / block_len_;  // at least one token left to compute
  uint64_t prev = 0;
  int hits = 0;
  for (; hits < usable; ++hits) {
    const int32_t* toks = seq.tokens.data() + (size_t)hits * block_len_;
    const uint64_t h = chain_hash(prev, toks);
    auto it = by_hash_.find(h);
    if (it == by_hash_.end() || !same_tokens(it->second, toks)) break;
    take(it->second);
    seq.block_table.push_back(it->second);
    seq.block_hashes.push_back(h);
    prev = h;
  }
  seq.blocks_active = !seq.block_table.empty();
  seq.num_cached = hits * block_len_;
  return seq.num_cached;
}

void BlockManager::register_full(Sequence& seq) {
  if (!prefix_caching_) return;
  const size_t full = std::min(seq.block_table.size(), (size_t)(seq.num_cached / block_len_));
  while (seq.block_hashes.size() < full) {
    const size_t i = seq.block_hashes.size();
    const int32_t* toks = seq.tokens.data() + i * block_len_;
    const uint64_t h = chain_hash(i ? seq.block_hashes[i - 1] : 0, toks);
    seq.block_hashes.push_back(h);
    const int32_t b = seq.block_table[i];
    if (hash_[b] != 0 || by_hash_.count(h)) continue;  // already findable (this block or a twin)
    hash_[b] = h;
    hashed_tokens_[b].assign(toks, toks + block_len_);
    by_hash_[h] = b;
  }
}

void BlockManager::check_invariants(const std::vector<const Sequence*>& seqs) const {
  const int n = num_blocks();
  std::vector<int> refs(n, 0), actives(n, 0);
  for (const Sequence* s : seqs) {
    TURBOLM_CHECK((int)s->block_table.size() >= blocks_for(s->num_cached), "invariant: session ", s->session_id,
                  " has ", s->num_cached, " cached tokens but only ", s->block_table.size(), " blocks");
    TURBOLM_CHECK(s->block_hashes.size() <= s->block_table.size(), "invariant: more hashes than blocks");
    std::vector<int32_t> sorted = s->block_table;
    std::sort(sorted.begin(), sorted.end());
    TURBOLM_CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(), "invariant: session ",
                  s->session_id, " holds a block twice");
    const bool active = s->blocks_active;
    if (s->status == SequenceStatus::kRunning && !s->block_table.empty())
      TURBOLM_CHECK(s->blocks_active, "invariant: running session ", s->session_id, " holds blocks as idle");
    for (int32_t b : s->block_table) {
      TURBOLM_CHECK(b >= 0 && b < n, "invariant: block id ", b, " out of range");
      ++refs[b];
      actives[b] += active;
    }
  }
  int cached = 0;
  for (int b = 0; b < n; ++b) {
    TURBOLM_CHECK(refs[b] == ref_[b] && actives[b] == active_[b], "invariant: block ", b, " counts ", ref_[b], "/",
                  active_[b], " holders, tables say ", refs[b], "/", actives[b]);
    cached += ref_[b] > 0 && active_[b] == 0;
    if (hash_[b] != 0) {
      auto it = by_hash_.find(hash_[b]);
      TURBOLM_CHECK(it != by_hash_.end() && it->second == b, "invariant: block ", b, " hashed but not findable");
    }
    TURBOLM_CHECK(!in_pool_[b] || (ref_[b] == 0 && hash_[b] != 0), "invariant: pooled block ", b, " held or unhashed");
  }
  TURBOLM_CHECK(cached == num_cached_, "invariant: ", cached, " cached blocks, counter says ", num_cached_);
  for (int32_t b : free_)
    TURBOLM_CHECK(ref_[b] == 0 && hash_[b] == 0 && !in_pool_[b], "invariant: free block ", b, " in use or hashed");
  TURBOLM_CHECK(num_free() + num_pooled() + cached + num_active() == n && num_active() >= 0,
                "invariant: free + pooled + cached + active != ", n);
  int held = 0;
  for (int b = 0; b < n; ++b) held += ref_[b] > 0;
  TURBOLM_CHECK(held + num_free() + num_pooled() == n, "invariant: ", held, " held + ", num_free(), " free + ",
                num_pooled(), " pooled != ", n);
  for (const auto& [h, b] : by_hash_) TURBOLM_CHECK(hash_[b] == h, "invariant: hash index points at block ", b);
  int lru_blocks = 0;
  for (const Sequence* s : lru_) lru_blocks += (int)!s->block_table.empty();
  TURBOLM_CHECK(lru_blocks == (int)lru_.size(), "invariant: an idle session without blocks is in the LRU list");
}

}  // namespace turbolm
