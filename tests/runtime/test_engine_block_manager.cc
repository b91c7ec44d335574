// BlockManager: allocation, append at block boundaries, cache/activate, LRU eviction, rewind,
// and the invariant check itself.
#include "check.h"
#include "engine/block_manager.h"

using namespace turbolm;

static void invariants(const BlockManager& bm, std::vector<const Sequence*> seqs) {
  bool ok = true;
  try {
    bm.check_invariants(seqs);
  } catch (const std::exception& e) {
    std::printf("  %s\n", e.what());
    ok = false;
  }
  CHECK(ok);
}

TEST(allocate_and_deallocate) {
  BlockManager bm(8, 4);
  CHECK_EQ(bm.blocks_for(0), 0);
  CHECK_EQ(bm.blocks_for(4), 1);
  CHECK_EQ(bm.blocks_for(5), 2);
  Sequence a;
  a.status = SequenceStatus::kRunning;
  CHECK_EQ(bm.blocks_needed(a, 9), 3);
  CHECK(bm.can_allocate(3));
  bm.allocate(a, 9);
  CHECK(a.block_table == std::vector<int32_t>({0, 1, 2}));
  CHECK_EQ(bm.num_free(), 5);
  CHECK_EQ(bm.num_active(), 3);
  CHECK(bm.state(0) == BlockState::kActive);
  bm.allocate(a, 12);  // still covered
  CHECK_EQ(a.block_table.size(), (size_t)3);
  a.num_cached = 9;
  invariants(bm, {&a});
  CHECK(!bm.can_allocate(6));
  Sequence b;
  b.status = SequenceStatus::kRunning;
  CHECK_THROWS(bm.allocate(b, 24));  // 6 blocks, 5 free
  bm.deallocate(a);
  CHECK_EQ(bm.num_free(), 8);
  CHECK(a.block_table.empty());
  CHECK_EQ(a.num_cached, 0);
  invariants(bm, {&a});
}

TEST(may_append_at_block_boundary) {
  BlockManager bm(4, 4);
  Sequence a;
  a.status = SequenceStatus::kRunning;
  bm.allocate(a, 4);
  a.num_cached = 3;  // next token at position 3: same block
  CHECK_EQ(bm.blocks_needed(a, a.num_cached + 1), 0);
  bm.may_append(a);
  CHECK_EQ(a.block_table.size(), (size_t)1);
  a.num_cached = 4;  // position 4: a new block
  CHECK(bm.can_append(a));
  bm.may_append(a);
  CHECK_EQ(a.block_table.size(), (size_t)2);
  invariants(bm, {&a});
}

TEST(cache_activate_and_lru_eviction) {
  BlockManager bm(6, 4);
  Sequence a, b, c;
  a.tokens.assign(8, 1);
  b.tokens.assign(8, 2);
  for (Sequence* s : {&a, &b}) {
    s->status = SequenceStatus::kRunning;
    bm.allocate(*s, 8);
    s->num_cached = 8;
  }
  // a goes idle first, then b: a is least recently used. active -> cached
  a.status = SequenceStatus::kCached;
  bm.cache(a);
  b.status = SequenceStatus::kCached;
  bm.cache(b);
  CHECK_EQ(bm.num_cached(), 4);
  CHECK_EQ(bm.num_free(), 2);
  CHECK(bm.state(a.block_table[0]) == BlockState::kCached);
  invariants(bm, {&a, &b});
  // c needs 3 blocks: 2 free + evict a (LRU); b untouched.
  c.status = SequenceStatus::kRunning;
  CHECK(bm.can_allocate(3));
  bm.allocate(c, 12);
  CHECK(a.block_table.empty());
  CHECK_EQ(a.num_cached, 0);
  CHECK_EQ(a.tokens.size(), (size_t)8);  // history kept: recomputed on resume
  CHECK_EQ(b.block_table.size(), (size_t)2);
  CHECK_EQ(b.num_cached, 8);
  CHECK_EQ(bm.num_cached(), 2);
  CHECK_EQ(bm.num_free(), 1);  // evicted a's 2 blocks, took 1 of them
  invariants(bm, {&a, &b, &c});
  // b resumes: cached -> active; now nothing is evictable.
  b.status = SequenceStatus::kRunning;
  bm.activate(b);
  CHECK_EQ(bm.num_cached(), 0);
  CHECK(!bm.can_allocate(2));
  CHECK(bm.evict_one() == nullptr);
  invariants(bm, {&a, &b, &c});
}

TEST(touching_a_cached_session_makes_it_most_recent) {
  BlockManager bm(4, 4);
  Sequence a, b;
  for (Sequence* s : {&a, &b}) {
    s->status = SequenceStatus::kRunning;
    bm.allocate(*s, 8);
    s->status = SequenceStatus::kCached;
    bm.cache(*s);
  }
  bm.activate(a);  // a resumes and goes idle again: b becomes the LRU
  bm.cache(a);
  CHECK(bm.evict_one() == &b);
  CHECK(bm.evict_one() == &a);
  CHECK_EQ(bm.num_free(), 4);
}

TEST(truncate_rewinds) {
  BlockManager bm(8, 4);
  Sequence a;
  a.status = SequenceStatus::kCached;
  a.tokens.assign(14, 3);
  a.status = SequenceStatus::kRunning;
  bm.allocate(a, 14);
  a.num_cached = 13;
  a.status = SequenceStatus::kCached;
  bm.cache(a);
  bm.truncate(a, 6);  // keeps blocks covering 6 tokens: 2 of 4
  CHECK_EQ(a.block_table.size(), (size_t)2);
  CHECK_EQ(a.num_cached, 6);
  CHECK_EQ(bm.num_cached(), 2);
  CHECK_EQ(bm.num_free(), 6);
  invariants(bm, {&a});
  bm.truncate(a, 0);
  CHECK(a.block_table.empty());
  CHECK(bm.evict_one() == nullptr);  // a left the LRU list with its last block
  invariants(bm, {&a});
}

TEST(invariant_check_catches_corruption) {
  BlockManager bm(4, 4);
  Sequence a, b;
  a.status = b.status = SequenceStatus::kRunning;
  bm.allocate(a, 4);
  b.block_table = a.block_table;  // two owners of one block
  CHECK_THROWS(bm.check_invariants({&a, &b}));
  b.block_table.clear();
  a.num_cached = 5;  // more cached tokens than blocks cover
  CHECK_THROWS(bm.check_invariants({&a, &b}));
}

int main() { return check::run_all(); }

// ---- prefix caching ----------------------------------------------------------------------------
static Sequence running_seq(std::vector<int32_t> tokens) {
  Sequence s;
  s.status = SequenceStatus::kRunning;
  s.tokens = std::move(tokens);
  return s;
}

static std::vector<int32_t> seq_tokens(int n, int base) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(base + i);
  return t;
}

TEST(prefix_blocks_are_registered_matched_and_shared) {
  BlockManager bm(10, 4, true);
  Sequence a = running_seq(seq_tokens(10, 100));
  bm.allocate(a, 10);
  a.num_cached = 10;  // blocks 0, 1 full; block 2 partial
  bm.register_full(a);
  CHECK_EQ(a.block_hashes.size(), (size_t)2);
  invariants(bm, {&a});
  // b starts with the same 9 tokens: shares a's two full blocks, computes from token 8
  std::vector<int32_t> tb = seq_tokens(9, 100);
  tb.push_back(7);
  Sequence b = running_seq(tb);
  CHECK_EQ(bm.match_prefix(b), 8);
  CHECK(b.block_table == std::vector<int32_t>(a.block_table.begin(), a.block_table.begin() + 2));
  CHECK_EQ(bm.refs(a.block_table[0]), 2);
  bm.allocate(b, 10);
  CHECK(b.block_table[2] != a.block_table[2]);  // the partial block is never shared
  invariants(bm, {&a, &b});
  // a sequence of exactly 8 matching tokens keeps its last token to compute: one block only
  Sequence c = running_seq(seq_tokens(8, 100));
  CHECK_EQ(bm.match_prefix(c), 4);
  // a different first block: nothing
  Sequence d = running_seq(seq_tokens(9, 200));
  CHECK_EQ(bm.match_prefix(d), 0);
  bm.deallocate(a);
  bm.deallocate(b);
  bm.deallocate(c);
  CHECK_EQ(bm.num_pooled(), 2);  // the two hashed blocks, held by nobody, still findable
  invariants(bm, {&a, &b, &c, &d});
  Sequence e = running_seq(seq_tokens(12, 100));
  CHECK_EQ(bm.match_prefix(e), 8);
  CHECK_EQ(bm.num_pooled(), 0);
  invariants(bm, {&e});
}

TEST(pooled_blocks_are_evicted_least_recent_first_and_forgotten) {
  BlockManager bm(4, 4, true);
  Sequence a = running_seq(seq_tokens(9, 10)), b = running_seq(seq_tokens(9, 50));
  bm.allocate(a, 5);  // two blocks each: one full + one partial
  a.num_cached = 5;
  bm.register_full(a);
  bm.allocate(b, 5);
  b.num_cached = 5;
  bm.register_full(b);
  bm.deallocate(a);  // a's full block pooled first (least recent)
  bm.deallocate(b);
  CHECK_EQ(bm.num_pooled(), 2);
  CHECK_EQ(bm.num_free(), 2);
  Sequence c = running_seq(seq_tokens(13, 90));
  CHECK(bm.can_allocate(4));
  bm.allocate(c, 13);  // 4 blocks: 2 free, then a's pooled block, then b's
  CHECK_EQ(bm.num_pooled(), 0);
  Sequence a2 = running_seq(seq_tokens(9, 10));
  bm.deallocate(c);
  CHECK_EQ(bm.match_prefix(a2), 0);  // forgotten when reused
  invariants(bm, {&a2, &c});
}

TEST(truncate_never_writes_inside_a_hashed_block) {
  BlockManager bm(6, 4, true);
  Sequence a = running_seq(seq_tokens(12, 1));
  bm.allocate(a, 12);
  a.num_cached = 12;
  bm.register_full(a);
  bm.truncate(a, 6);  // position 6 is inside hashed block 1: dropped, recomputed from 4
  CHECK_EQ(a.block_table.size(), (size_t)1);
  CHECK_EQ(a.num_cached, 4);
  CHECK_EQ(bm.num_pooled(), 2);  // blocks 1 and 2 stay findable for others
  bm.truncate(a, 4);  // at a block boundary: nothing to drop
  CHECK_EQ(a.block_table.size(), (size_t)1);
  invariants(bm, {&a});
}

TEST(idle_sessions_sharing_blocks_are_evicted_until_enough_is_free) {
  BlockManager bm(4, 4, true);
  Sequence a = running_seq(seq_tokens(9, 1));
  bm.allocate(a, 9);
  a.num_cached = 9;
  bm.register_full(a);
  Sequence b = running_seq(seq_tokens(9, 1));
  CHECK_EQ(bm.match_prefix(b), 8);
  bm.allocate(b, 9);
  a.status = b.status = SequenceStatus::kCached;
  bm.cache(a);
  bm.cache(b);
  CHECK_EQ(bm.num_cached(), 4);  // 2 shared + 1 each
  invariants(bm, {&a, &b});
  Sequence c = running_seq(seq_tokens(16, 70));
  CHECK(bm.can_allocate(4));
  bm.allocate(c, 16);  // evicts a (frees its own block only), then b
  CHECK(a.block_table.empty() && b.block_table.empty() && a.num_cached == 0);
  invariants(bm, {&a, &b, &c});
}
