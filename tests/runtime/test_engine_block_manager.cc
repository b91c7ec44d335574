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
