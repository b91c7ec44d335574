// LlamaModel: one step's forward over a flattened batch, on tp rank threads.
//
// Threads: rank 0 runs on the caller's thread (the engine thread), ranks 1..tp-1 on persistent
// threads owned here, each with a ThreadPool of num_threads / tp threads (itself included). A
// step is planned once on the caller (token list, positions, RoPE frequencies, attention work
// units, buffer sizes), then every rank runs every layer on its weight slice and meets the others
// in the Communicator after wo and after w2. Every rank keeps its own copy of the residual stream
// (identical after each all-reduce), so ranks never wait on each other except in the all-reduce.
#include "model/llama.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/threadpool.h"
#include "model/comm.h"
#include "model/rope.h"
#include "model/weights.h"

namespace turbolm {
namespace {

using kernels::KernelTable;
using kernels::QKernelTable;

constexpr int kAttnQueryChunk = 64;  // queries per attention work unit: balances long prefills

// pool.parallel_for through a one-pointer closure: std::function stores that inline, so the
// hundreds of loops per step allocate nothing (a closure of several references would be boxed).
template <typename F>
void par_for(ThreadPool& pool, int n, const F& f) {
  const F* fp = &f;
  pool.parallel_for(n, [fp](int b, int e) { (*fp)(b, e); });
}
template <typename F>
void par_for_indexed(ThreadPool& pool, int n, const F& f) {
  const F* fp = &f;
  pool.parallel_for_indexed(n, [fp](int slot, int b, int e) { (*fp)(slot, b, e); });
}

// One attention work unit: query heads [h, h+1) of queries [q0, q1) of item `item`.
struct AttnUnit {
  int item, head, q0, q1;
};

// Everything about a step that does not depend on the rank; built on the caller's thread.
struct StepPlan {
  int T = 0;                      // tokens this step, all items
  int max_len = 0;                // longest start_pos + n_tokens
  std::vector<int32_t> tokens;    // [T]
  std::vector<int32_t> pos;       // [T] absolute position of each token
  std::vector<int32_t> item_of;   // [T] which item a token belongs to
  std::vector<int> offset;        // [B + 1] first token of each item
  std::vector<float> inv_freq;    // [B][rot_dim / 2] RoPE frequencies of each item
  std::vector<float> inv_freq_local;  // [B][rot_dim / 2] those of sliding layers (rope_local_theta > 0)
  std::vector<float> q_scale;     // [T] logN factor (1 when unused)
  std::vector<int32_t> out_rows;  // [R] token rows whose logits are wanted, in output order
  std::vector<AttnUnit> units;    // attention work units
  std::vector<ForwardItem> items;
};

// A rank's activations, sized for the largest step seen so far (grown, never shrunk, so the
// steady state allocates nothing).
struct RunState {
  int cap_tokens = 0, cap_len = 0;
  AlignedArray<float> x;        // [T, hidden] residual stream
  AlignedArray<float> xn;       // [T, hidden] normed input of the current sublayer; rows for logits at the end
  AlignedArray<float> qkv;      // [T, (Hr + 2·KVr)·D]
  AlignedArray<float> attn;     // [T, Hr·D]
  AlignedArray<float> y;        // [T, hidden] this rank's partial wo / w2 output, summed across ranks
  AlignedArray<float> gate;     // [T, Ir] w1 output, then silu(gate)·up
  AlignedArray<float> up;       // [T, Ir] w3 output
  AlignedArray<float> scratch;  // [threads][cap_len] attention scores, one row per pool slot
  // act_type int8: the current linear's input quantized (kernels/qgemm.h QActs), sized for the
  // widest K (max of hidden, Hr·D, Ir) and the smallest group (kQGroupAlign).
  AlignedArray<int8_t> xq;      // [T][qacts_ldq(max K)]
  AlignedArray<float> xa, xs;   // [T][max K / kQGroupAlign] scales, group sums
  kernels::QActs acts;          // the view of them handed to the kernels
};

struct Rank {
  int index = 0;
  const RankWeights* w = nullptr;
  std::unique_ptr<ThreadPool> pool;
  AlignedArray<uint8_t> kv;  // [num_blocks][num_layer][2][KVr][block_len][D] of kv_type (fp16, or int8)
  RunState s;
};

}  // namespace

struct LlamaModel::Impl {
  ModelConfig cfg;
  int tp = 1;
  int hidden = 0, D = 0, rot = 0, Hr = 0, KVr = 0, Ir = 0, qkv_n = 0;
  int num_blocks = 0;
  const KernelTable* k = nullptr;
  const QKernelTable* qk = nullptr;  // int4 / int8 linears
  bool act_int8 = false;             // act_type int8: quantized linears take int8 activations
  int max_k = 0;                     // widest linear input on a rank (the xq buffers' row)
  kernels::KVType kv_type = kernels::KVType::kF16;
  size_t kv_elem = 2;  // bytes per cached K or V element
  LlamaWeights weights;
  std::vector<Rank> ranks;  // [tp]
  std::unique_ptr<Communicator> comm;
  StepPlan plan;
  float* logits = nullptr;

  // Rank threads 1..tp-1: woken by bumping `job`, report through `done`.
  std::vector<std::thread> threads;
  std::mutex mu;
  std::condition_variable cv_job, cv_done;
  uint64_t job = 0;
  int done = 0;
  bool stop = false;
  std::exception_ptr error;

  Impl(const std::string& dir, const ModelOptions& opts);
  ~Impl();

  int64_t kv_layer_elems() const { return (int64_t)2 * KVr * cfg.cache_block_seq_len * D; }
  int64_t kv_block_elems() const { return kv_layer_elems() * cfg.num_layer; }

  // act_type bf16: every fp16/bf16 linear (and the lm head) repacked into bf16 k-pair panels,
  // which replace the fp16 ones (the same bytes per weight; one linear's extra copy at a time).
  void use_bf16_weights();
  void plan_step(const std::vector<ForwardItem>& batch);
  void grow(Rank& r);
  void run_rank(Rank& r);
  void rank_thread(int index);
  void gemm(Rank& r, const float* x, int ldx, const Linear& w, const float* bias, float* y, int ldy, int M);
  // With act_type int8 and a quantized `w`: x [M, w.K] quantized for w's group size into the
  // rank's buffers, rows shared out over its pool; else nullptr (the linear takes fp32 x).
  const kernels::QActs* quantize_input(Rank& r, const float* x, int ldx, int M, const Linear& w);
  // Panels [b, e) of one linear, whichever its weight format; `a`: x quantized, or nullptr.
  void linear_panels(const float* x, int ldx, const kernels::QActs* a, const Linear& w, float* y, int ldy, int M,
                     int b, int e) const {
    if (a) qk->qgemm_a8(*a, w.qw, y, ldy, M, b, e, false);
    else if (w.quantized()) qk->qgemm(x, ldx, w.qw, y, ldy, M, b, e, false);
    else if (w.wb.data) k->gemm_bf16(x, ldx, w.wb, y, ldy, M, b, e, false);
    else k->gemm(x, ldx, w.w, y, ldy, M, b, e, false);
  }
};

LlamaModel::Impl::Impl(const std::string& dir, const ModelOptions& opts) {
  cfg = load_config(dir + "/config.ini");
  tp = opts.tp > 0 ? opts.tp : cfg.tensor_para_size;
  if (cfg.quant_policy != 0 && cfg.quant_policy != kQuantPolicyKVInt8)
    fail(dir, "/config.ini: quant_policy ", cfg.quant_policy, " is not supported; use 0 (fp16 KV cache) or ",
         kQuantPolicyKVInt8, " (int8 KV cache)");
  if (cfg.quant_policy == kQuantPolicyKVInt8) {
    kv_type = kernels::KVType::kI8;
    kv_elem = 1;
  }
  if (cfg.rotary_embedding <= 0 || cfg.rotary_embedding > cfg.size_per_head || cfg.rotary_embedding % 2)
    fail(dir, "/config.ini: rotary_embedding ", cfg.rotary_embedding, " must be even and in (0, size_per_head]");
  weights = load_weights(dir, cfg, tp);  // checks tp against the workspace
  k = opts.reference_kernels ? &kernels::reference_kernels() : &kernels::best_kernels();
  qk = opts.reference_kernels ? &kernels::reference_qkernels() : &kernels::best_qkernels();
  hidden = cfg.hidden_units;
  D = cfg.size_per_head;
  rot = cfg.rotary_embedding;
  Hr = cfg.head_num / tp;
  KVr = cfg.kv_head_num / tp;
  Ir = cfg.inter_size / tp;
  qkv_n = (Hr + 2 * KVr) * D;
  max_k = std::max({hidden, Hr * D, Ir});
  const std::string act = opts.act_type.empty() ? cfg.act_type : opts.act_type;
  const bool int_weights = cfg.weight_type == WeightType::kINT4 || cfg.weight_type == WeightType::kINT8;
  if (act != "float" && act != "int8" && act != "bf16") fail("act_type '", act, "' is not one of float, int8, bf16");
  if (act == "int8" && !int_weights)
    fail("act_type int8 needs an int4 or int8 workspace; ", dir, " is ", to_string(cfg.weight_type));
  if (act == "bf16" && int_weights)
    fail("act_type bf16 needs an fp16 or bf16 workspace; ", dir, " is ", to_string(cfg.weight_type),
         " (use act_type int8 for int4/int8 weights)");
  if (act == "bf16" && !k->gemm_bf16)
    fail("act_type bf16 needs bf16 dot products (AVX512-BF16); this CPU runs the ", k->name,
         " kernels: use act_type float");
  act_int8 = act == "int8";
  if (act == "bf16") use_bf16_weights();

  const int total = opts.num_threads > 0 ? opts.num_threads : ThreadPool::physical_cores();
  const int per_rank = std::max(1, total / tp);
  comm = std::make_unique<Communicator>(tp);
  ranks.resize(tp);
  for (int r = 0; r < tp; ++r) {
    ranks[r].index = r;
    ranks[r].w = &weights.ranks[r];
    ranks[r].pool = std::make_unique<ThreadPool>(per_rank);
  }
  for (int r = 1; r < tp; ++r) threads.emplace_back(&Impl::rank_thread, this, r);
}

void LlamaModel::Impl::use_bf16_weights() {
  auto convert = [](Linear& L) {
    if (L.quantized() || L.w.data == nullptr) return;
    if (L.w.K % 2) fail("act_type bf16: a linear's input size ", L.w.K, " is odd (the k-pairs need it even)");
    L.bpanels = AlignedArray<uint16_t>(kernels::packed_elems(L.w.K, L.w.N), true);
    kernels::pack_bf16_pairs(L.w, L.bpanels.data());
    L.wb = kernels::PackedBF16{L.w.K, L.w.N, L.w.n_panels, L.bpanels.data()};
    L.panels = AlignedArray<uint16_t>();
    L.w.data = nullptr;  // K, N, n_panels stay: they size the calls
  };
  for (RankWeights& rw : weights.ranks)
    for (LayerWeights& lw : rw.layers)
      for (Linear* L : {&lw.w_qkv, &lw.wo, &lw.w1, &lw.w3, &lw.w2}) convert(*L);
  convert(weights.shared.output);
}

LlamaModel::Impl::~Impl() {
  {
    std::lock_guard<std::mutex> lk(mu);
    stop = true;
  }
  cv_job.notify_all();
  for (auto& t : threads) t.join();
}

void LlamaModel::Impl::rank_thread(int index) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu);
      cv_job.wait(lk, [&] { return stop || job != seen; });
      if (stop) return;
      seen = job;
    }
    std::exception_ptr e;
    try {
      run_rank(ranks[index]);
    } catch (...) {
      e = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lk(mu);
      if (e && !error) error = e;
      ++done;
    }
    cv_done.notify_one();
  }
}

void LlamaModel::Impl::plan_step(const std::vector<ForwardItem>& batch) {
  StepPlan& p = plan;
  p.items = batch;
  p.tokens.clear();
  p.pos.clear();
  p.item_of.clear();
  p.offset.assign(1, 0);
  p.inv_freq.resize(batch.size() * (rot / 2));
  p.inv_freq_local.resize(cfg.rope_local_theta > 0 ? batch.size() * (rot / 2) : 0);
  p.q_scale.clear();
  p.out_rows.clear();
  p.units.clear();
  p.max_len = 0;
  const int bl = cfg.cache_block_seq_len;
  for (size_t b = 0; b < batch.size(); ++b) {
    const ForwardItem& it = batch[b];
    if (it.n_tokens <= 0 || !it.tokens) fail("forward: item ", b, " has no tokens");
    if (it.start_pos < 0) fail("forward: item ", b, " has negative start_pos ", it.start_pos);
    if (!it.block_table) fail("forward: item ", b, " has no block table");
    const int len = it.start_pos + it.n_tokens;
    for (int i = 0; i < (len + bl - 1) / bl; ++i)
      if (it.block_table[i] < 0 || it.block_table[i] >= num_blocks)
        fail("forward: item ", b, " block_table[", i, "] = ", it.block_table[i], " is outside the KV pool of ",
             num_blocks, " blocks");
    const int base = (int)p.tokens.size();
    for (int i = 0; i < it.n_tokens; ++i) {
      const int32_t t = it.tokens[i];
      if (t < 0 || t >= cfg.vocab_size) fail("forward: item ", b, " token ", t, " is outside [0, vocab_size=", cfg.vocab_size, ")");
      p.tokens.push_back(t);
      p.pos.push_back(it.start_pos + i);
      p.item_of.push_back((int32_t)b);
      p.q_scale.push_back(logn_scale(cfg, it.start_pos + i));
    }
    p.offset.push_back((int)p.tokens.size());
    p.max_len = std::max(p.max_len, len);
    rope_inv_freq(cfg, len, &p.inv_freq[b * (rot / 2)]);
    if (cfg.rope_local_theta > 0) rope_inv_freq(cfg, len, &p.inv_freq_local[b * (rot / 2)], true);
    if (it.logits == LogitsMode::kLast) p.out_rows.push_back(base + it.n_tokens - 1);
    else if (it.logits == LogitsMode::kAll)
      for (int i = 0; i < it.n_tokens; ++i) p.out_rows.push_back(base + i);
    // Longest work first: units of later query chunks attend to more keys.
    for (int q0 = 0; q0 < it.n_tokens; q0 += kAttnQueryChunk)
      for (int h = 0; h < Hr; ++h) p.units.push_back({(int)b, h, q0, std::min(it.n_tokens, q0 + kAttnQueryChunk)});
  }
  p.T = (int)p.tokens.size();
  std::sort(p.units.begin(), p.units.end(), [&](const AttnUnit& a, const AttnUnit& c) {
    const int64_t wa = (int64_t)(a.q1 - a.q0) * (batch[a.item].start_pos + a.q1);
    const int64_t wc = (int64_t)(c.q1 - c.q0) * (batch[c.item].start_pos + c.q1);
    return wa > wc;
  });
}

void LlamaModel::Impl::grow(Rank& r) {
  RunState& s = r.s;
  if (plan.T > s.cap_tokens) {
    const int T = std::max(plan.T, s.cap_tokens * 3 / 2);
    s.x = AlignedArray<float>((size_t)T * hidden);
    s.xn = AlignedArray<float>((size_t)T * hidden);
    s.qkv = AlignedArray<float>((size_t)T * qkv_n);
    s.attn = AlignedArray<float>((size_t)T * Hr * D);
    s.y = AlignedArray<float>((size_t)T * hidden);
    s.gate = AlignedArray<float>((size_t)T * Ir);
    s.up = AlignedArray<float>((size_t)T * Ir);
    if (act_int8) {
      s.xq = AlignedArray<int8_t>((size_t)T * kernels::qacts_ldq(max_k));
      s.xa = AlignedArray<float>((size_t)T * (max_k / kernels::kQGroupAlign));
      s.xs = AlignedArray<float>((size_t)T * (max_k / kernels::kQGroupAlign));
    }
    s.cap_tokens = T;
  }
  if (plan.max_len > s.cap_len) {
    const int L = std::max(plan.max_len, s.cap_len * 3 / 2);
    s.scratch = AlignedArray<float>((size_t)r.pool->size() * L);
    s.cap_len = L;
  }
}

const kernels::QActs* LlamaModel::Impl::quantize_input(Rank& r, const float* x, int ldx, int M, const Linear& w) {
  if (!act_int8 || !w.quantized()) return nullptr;
  RunState& s = r.s;
  kernels::QActs& a = s.acts;
  const int K = w.qw.K, B = kernels::act_block(w.qw.group_size);
  a = kernels::QActs{K, B, s.xq.data(), (int)kernels::qacts_ldq(max_k), s.xa.data(), s.xs.data(),
                     max_k / kernels::kQGroupAlign};
  par_for(*r.pool, M, [&](int b, int e) {
    qk->quantize_acts(x + (size_t)b * ldx, ldx, e - b, K, B, s.xq.data() + (size_t)b * a.ldq, a.ldq,
                      s.xa.data() + (size_t)b * a.ldg, s.xs.data() + (size_t)b * a.ldg, a.ldg);
  });
  return &a;
}

// y[M, N] = x[M, K] · W (+ bias), the panels shared out over the rank's pool.
void LlamaModel::Impl::gemm(Rank& r, const float* x, int ldx, const Linear& w, const float* bias, float* y,
                            int ldy, int M) {
  const int N = w.quantized() ? w.qw.N : w.w.N;
  const kernels::QActs* a = quantize_input(r, x, ldx, M, w);
  par_for(*r.pool, w.n_panels(), [&](int b, int e) {
    linear_panels(x, ldx, a, w, y, ldy, M, b, e);
    if (bias) {
      const int n0 = b * kernels::kPanel, n1 = std::min(N, e * kernels::kPanel);
      for (int m = 0; m < M; ++m)
        for (int n = n0; n < n1; ++n) y[(size_t)m * ldy + n] += bias[n];
    }
  });
}

void LlamaModel::Impl::run_rank(Rank& r) {
  const StepPlan& p = plan;
  RunState& s = r.s;
  ThreadPool& pool = *r.pool;
  const int T = p.T, half = rot / 2;
  const float eps = cfg.norm_eps;
  const int bl = cfg.cache_block_seq_len;
  const bool logn = cfg.use_logn_attn != 0;
  const kernels::SiluMulFn act_mul = cfg.hidden_act == "gelu_tanh" ? k->gelu_mul : k->silu_mul;
  const float rope_q = cfg.rope_attention_factor;  // yarn / longrope: cos and sin times this
  const bool local_rope = cfg.rope_local_theta > 0;
  const float emb_scale = cfg.embedding_scale;

  // Embedding rows (Gemma: scaled by sqrt(hidden)).
  par_for(pool, T, [&](int b, int e) {
    for (int t = b; t < e; ++t) {
      float* xr = s.x.data() + (size_t)t * hidden;
      if (weights.shared.emb_bits)
        weights.shared.embedding_row(p.tokens[t], hidden, xr);
      else
        k->to_f32(weights.shared.tok_embeddings.data() + (size_t)p.tokens[t] * hidden, weights.shared.dtype, xr,
                  hidden);
      if (emb_scale != 1.f)
        for (int i = 0; i < hidden; ++i) xr[i] *= emb_scale;
    }
  });

  auto rmsnorm = [&](const std::vector<float>& w) {
    par_for(pool, T, [&](int b, int e) {
      k->rmsnorm(s.x.data() + (size_t)b * hidden, hidden, w.data(), eps, e - b, hidden,
                 s.xn.data() + (size_t)b * hidden, hidden);
    });
  };
  // x += sum over ranks of y (+ bias, added once since every rank holds the same sum); with
  // post_norm (Gemma) the sum is RMS-normed by `post` first.
  auto reduce_residual = [&](const std::vector<float>& bias, const std::vector<float>& post) {
    comm->allreduce_sum(r.index, s.y.data(), (size_t)T * hidden);
    par_for(pool, T, [&](int b, int e) {
      if (!post.empty())
        k->rmsnorm(s.y.data() + (size_t)b * hidden, hidden, post.data(), eps, e - b, hidden,
                   s.y.data() + (size_t)b * hidden, hidden);
      for (int t = b; t < e; ++t) {
        float* xr = s.x.data() + (size_t)t * hidden;
        const float* yr = s.y.data() + (size_t)t * hidden;
        if (bias.empty()) for (int i = 0; i < hidden; ++i) xr[i] += yr[i];
        else for (int i = 0; i < hidden; ++i) xr[i] += yr[i] + bias[i];
      }
    });
  };

  for (int l = 0; l < cfg.num_layer; ++l) {
    const LayerWeights& lw = r.w->layers[l];
    kernels::PagedKV kv;
    kv.k_base = r.kv.data() + l * kv_layer_elems() * kv_elem;
    kv.v_base = r.kv.data() + (l * kv_layer_elems() + (int64_t)KVr * bl * D) * kv_elem;
    kv.block_stride = kv_block_elems();
    kv.head_stride = (int64_t)bl * D;
    kv.block_len = bl;
    kv.type = kv_type;
    kv.k_scale = lw.kv_qparams[0];
    kv.k_zp = lw.kv_qparams[1];
    kv.v_scale = lw.kv_qparams[2];
    kv.v_zp = lw.kv_qparams[3];
    const bool slides = cfg.layer_slides(l);
    kernels::AttnParams ap;
    ap.scale = cfg.attn_scale > 0 ? cfg.attn_scale : 1.f / std::sqrt((float)D);
    ap.window = slides ? cfg.sliding_window : 0;
    ap.softcap = cfg.attn_softcap;
    const bool local = slides && local_rope;  // Gemma 3's sliding layers: their own unscaled RoPE
    const std::vector<float>& freqs = local ? p.inv_freq_local : p.inv_freq;
    const float qmul = local ? 1.f : rope_q;

    // ---- attention ----
    rmsnorm(lw.attn_norm);
    gemm(r, s.xn.data(), hidden, lw.w_qkv, lw.w_qkv.bias.empty() ? nullptr : lw.w_qkv.bias.data(), s.qkv.data(), qkv_n, T);
    // RoPE on q and k, logN on q, then k and v into the paged cache; token runs of one item at a time.
    par_for(pool, T, [&](int b, int e) {
      while (b < e) {
        const int item = p.item_of[b];
        const int run_end = std::min(e, p.offset[item + 1]);
        const int n = run_end - b;
        float* q = s.qkv.data() + (size_t)b * qkv_n;
        const float* f = &freqs[(size_t)item * half];
        if (!lw.q_norm.empty())  // Qwen3: each q and k head normalized before RoPE (in place)
          for (int t = 0; t < n; ++t) {
            float* qt = q + (size_t)t * qkv_n;
            k->rmsnorm(qt, D, lw.q_norm.data(), eps, Hr, D, qt, D);
            k->rmsnorm(qt + Hr * D, D, lw.k_norm.data(), eps, KVr, D, qt + Hr * D, D);
          }
        k->rope(q, qkv_n, n, Hr, D, rot, &p.pos[b], f);
        k->rope(q + Hr * D, qkv_n, n, KVr, D, rot, &p.pos[b], f);
        if (logn)
          for (int t = 0; t < n; ++t)
            if (p.q_scale[b + t] != 1.f)
              for (int i = 0; i < Hr * D; ++i) q[(size_t)t * qkv_n + i] *= p.q_scale[b + t];
        if (qmul != 1.f)  // HF scales cos and sin: the rotary dims of q and k (before k is cached)
          for (int t = 0; t < n; ++t)
            for (int h = 0; h < Hr + KVr; ++h)
              for (int i = 0; i < rot; ++i) q[(size_t)t * qkv_n + h * D + i] *= qmul;
        kernels::PagedKV ikv = kv;
        ikv.block_table = p.items[item].block_table;
        k->kv_store(q + Hr * D, q + (Hr + KVr) * D, qkv_n, n, p.pos[b], KVr, D, ikv);
        b = run_end;
      }
    });
    // Attention over (item, head, query chunk) units, handed out dynamically: their costs differ
    // by orders of magnitude (a long prefill chunk vs a decode token).
    std::atomic<int> next{0};
    par_for_indexed(pool, pool.size(), [&](int slot, int, int) {
      float* scratch = s.scratch.data() + (size_t)slot * s.cap_len;
      for (int u; (u = next.fetch_add(1, std::memory_order_relaxed)) < (int)p.units.size();) {
        const AttnUnit& a = p.units[u];
        const ForwardItem& it = p.items[a.item];
        const int t0 = p.offset[a.item] + a.q0;
        kernels::PagedKV ikv = kv;
        ikv.block_table = it.block_table;
        k->attention(s.qkv.data() + (size_t)t0 * qkv_n, qkv_n, a.q1 - a.q0, it.start_pos + a.q0, Hr, KVr, D, ikv,
                     ap, s.attn.data() + (size_t)t0 * Hr * D, Hr * D, a.head, a.head + 1, scratch);
      }
    });
    gemm(r, s.attn.data(), Hr * D, lw.wo, nullptr, s.y.data(), hidden, T);  // its bias: after the sum
    reduce_residual(lw.wo.bias, lw.post_attn_norm);

    // ---- feed-forward ----
    rmsnorm(lw.ffn_norm);
    {
      const int p1 = lw.w1.n_panels(), p3 = lw.w3.n_panels();
      const kernels::QActs* a = quantize_input(r, s.xn.data(), hidden, T, lw.w1);  // w1 and w3 share K and G
      par_for(pool, p1 + p3, [&](int b, int e) {  // w1 and w3 in one loop
        if (b < p1) linear_panels(s.xn.data(), hidden, a, lw.w1, s.gate.data(), Ir, T, b, std::min(e, p1));
        if (e > p1)
          linear_panels(s.xn.data(), hidden, a, lw.w3, s.up.data(), Ir, T, std::max(b, p1) - p1, e - p1);
      });
    }
    par_for(pool, T, [&](int b, int e) {
      act_mul(s.gate.data() + (size_t)b * Ir, s.up.data() + (size_t)b * Ir, s.gate.data() + (size_t)b * Ir,
              (e - b) * Ir);
    });
    gemm(r, s.gate.data(), Ir, lw.w2, nullptr, s.y.data(), hidden, T);
    reduce_residual({}, lw.post_ffn_norm);
  }

  // Final norm of the rows whose logits are wanted, then the vocab panels split over all ranks.
  const int R = (int)p.out_rows.size();
  if (R == 0) return;
  par_for(pool, R, [&](int b, int e) {
    for (int j = b; j < e; ++j)
      k->rmsnorm(s.x.data() + (size_t)p.out_rows[j] * hidden, hidden, weights.shared.norm.data(), eps, 1, hidden,
                 s.xn.data() + (size_t)j * hidden, hidden);
  });
  // fp16/bf16 panels, or int8 for quantized workspaces (weights.h kLMHeadBits).
  const Linear& out = weights.shared.output;
  const int np = out.n_panels();
  const int P0 = (int)((int64_t)np * r.index / tp), P1 = (int)((int64_t)np * (r.index + 1) / tp);
  const kernels::QActs* a = quantize_input(r, s.xn.data(), hidden, R, out);
  const float cap = cfg.final_softcap;
  par_for(pool, P1 - P0, [&](int b, int e) {
    linear_panels(s.xn.data(), hidden, a, out, logits, cfg.vocab_size, R, P0 + b, P0 + e);
    if (cap > 0) {  // Gemma 2: logits = cap · tanh(logits / cap)
      const int n0 = (P0 + b) * kernels::kPanel, n1 = std::min(cfg.vocab_size, (P0 + e) * kernels::kPanel);
      for (int m = 0; m < R; ++m) k->softcap(logits + (size_t)m * cfg.vocab_size + n0, n1 - n0, cap);
    }
  });
}

LlamaModel::LlamaModel(const std::string& weights_dir, const ModelOptions& opts)
    : impl_(std::make_unique<Impl>(weights_dir, opts)) {}
LlamaModel::~LlamaModel() = default;

const ModelConfig& LlamaModel::config() const { return impl_->cfg; }
int LlamaModel::tp() const { return impl_->tp; }

size_t LlamaModel::kv_bytes_per_block() const {
  return (size_t)impl_->kv_block_elems() * impl_->tp * impl_->kv_elem;
}

void LlamaModel::allocate_kv(int num_blocks) {
  if (num_blocks < 0) fail("allocate_kv: negative block count ", num_blocks);
  for (Rank& r : impl_->ranks) {
    r.kv = AlignedArray<uint8_t>();  // free the old pool before taking the new one
    r.kv = AlignedArray<uint8_t>((size_t)num_blocks * impl_->kv_block_elems() * impl_->kv_elem);
  }
  impl_->num_blocks = num_blocks;
}

int LlamaModel::num_kv_blocks() const { return impl_->num_blocks; }

void LlamaModel::parallel_for(int n, const std::function<void(int, int)>& fn) {
  impl_->ranks[0].pool->parallel_for(n, fn);  // rank 0 runs on the caller's thread: it owns this pool
}

void LlamaModel::forward(const std::vector<ForwardItem>& batch, float* logits) {
  Impl& m = *impl_;
  if (batch.empty()) return;
  m.plan_step(batch);  // validates before any rank starts: a rank must never fail mid-step
  for (Rank& r : m.ranks) m.grow(r);
  m.logits = logits;
  if (m.tp == 1) {
    m.run_rank(m.ranks[0]);
    return;
  }
  {
    std::lock_guard<std::mutex> lk(m.mu);
    ++m.job;
    m.done = 0;
    m.error = nullptr;
  }
  m.cv_job.notify_all();
  std::exception_ptr e;
  try {
    m.run_rank(m.ranks[0]);
  } catch (...) {
    e = std::current_exception();
  }
  std::unique_lock<std::mutex> lk(m.mu);
  m.cv_done.wait(lk, [&] { return m.done == m.tp - 1; });
  if (!e) e = m.error;
  if (e) std::rethrow_exception(e);
}

}  // namespace turbolm
