// LlamaModel without Python: the communicator, RoPE scaling, and forward-pass invariants on a
// tiny random workspace written here (chunked prefill == one pass, batch == items alone,
// tp=2 sliced == tp=1, int8 sliced workspace errors). The HF oracle lives in
// tests/python/test_model_forward.py.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "core/error.h"
#include "kernels/kernels.h"
#include "model/comm.h"
#include "model/llama.h"
#include "model/rope.h"

using namespace turbolm;

namespace {

// ---- communicator ---------------------------------------------------------------------------

TEST(allreduce_sums_in_rank_order) {
  for (int n_ranks : {1, 2, 3, 4}) {
    Communicator comm(n_ranks);
    const size_t n = 1000;
    std::vector<std::vector<float>> bufs(n_ranks, std::vector<float>(n));
    std::vector<std::thread> ts;
    for (int r = 0; r < n_ranks; ++r)
      ts.emplace_back([&, r] {
        for (int rep = 0; rep < 50; ++rep) {  // many rounds: the barrier must be reusable
          for (size_t i = 0; i < n; ++i) bufs[r][i] = (float)(r + 1) * (float)i + rep;
          comm.allreduce_sum(r, bufs[r].data(), n);
          comm.barrier();  // everyone has read the result before the next round rewrites it
        }
      });
    for (auto& t : ts) t.join();
    for (int r = 0; r < n_ranks; ++r)
      for (size_t i = 0; i < n; i += 97) {
        float want = 0;
        for (int q = 0; q < n_ranks; ++q) want += (float)(q + 1) * (float)i + 49;
        CHECK_NEAR(bufs[r][i], want, 1e-3);
      }
  }
}

TEST(rope_dynamic_ntk_and_logn) {
  ModelConfig c;
  c.rotary_embedding = 8;
  c.rope_theta = 10000.f;
  c.max_position_embeddings = 16;
  float f[4];
  rope_inv_freq(c, 100, f);  // no scaling configured: plain theta
  CHECK_NEAR(f[0], 1.0, 1e-7);
  CHECK_NEAR(f[1], std::pow(10000.0, -2.0 / 8), 1e-6);
  c.rope_scaling_factor = 2.f;
  rope_inv_freq(c, 16, f);  // within max_pos: unchanged
  CHECK_NEAR(f[1], std::pow(10000.0, -2.0 / 8), 1e-6);
  rope_inv_freq(c, 32, f);  // base' = theta * (2*32/16 - 1)^(8/6)
  const double base = 10000.0 * std::pow(3.0, 8.0 / 6.0);
  CHECK_NEAR(f[1], std::pow(base, -2.0 / 8), 1e-6);
  CHECK_NEAR(logn_scale(c, 10), 1.0, 0);
  c.use_logn_attn = 1;
  CHECK_NEAR(logn_scale(c, 15), 1.0, 0);
  CHECK_NEAR(logn_scale(c, 31), std::log(32.0) / std::log(16.0), 1e-6);
}

// ---- a tiny workspace ------------------------------------------------------------------------

struct Tiny {
  int hidden = 64, H = 4, KV = 2, D = 16, I = 96, vocab = 101, layers = 2, block = 4;
  bool bias = true;
};

void write_f16(const std::string& path, const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = kernels::f32_to_f16(v[i]);
  std::ofstream(path, std::ios::binary).write((const char*)h.data(), h.size() * 2);
}

std::string make_workspace(const Tiny& m) {
  char tmpl[] = "/tmp/turbolm_test_model_XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto rnd = [&](size_t n, float scale, float offset = 0.f) {
    std::vector<float> v(n);
    for (auto& x : v) x = offset + scale * nd(rng);
    return v;
  };
  std::ofstream(dir + "/config.ini")
      << "[llama]\nmodel_name = tiny\ntensor_para_size = 1\nhead_num = " << m.H << "\nkv_head_num = " << m.KV
      << "\nvocab_size = " << m.vocab << "\nnum_layer = " << m.layers << "\ninter_size = " << m.I
      << "\nnorm_eps = 1e-5\nattn_bias = " << (m.bias ? 1 : 0) << "\nweight_type = fp16\nrotary_embedding = " << m.D
      << "\nsize_per_head = " << m.D << "\ncache_block_seq_len = " << m.block << "\n";
  const float ws = 1.f / std::sqrt((float)m.hidden);
  write_f16(dir + "/tok_embeddings.weight", rnd((size_t)m.vocab * m.hidden, 1.f));
  write_f16(dir + "/output.weight", rnd((size_t)m.vocab * m.hidden, ws));
  write_f16(dir + "/norm.weight", rnd(m.hidden, 0.1f, 1.f));
  const int qkv = (m.H + 2 * m.KV) * m.D;
  for (int i = 0; i < m.layers; ++i) {
    const std::string p = dir + "/layers." + std::to_string(i) + ".";
    write_f16(p + "attention_norm.weight", rnd(m.hidden, 0.1f, 1.f));
    write_f16(p + "ffn_norm.weight", rnd(m.hidden, 0.1f, 1.f));
    write_f16(p + "attention.w_qkv.0.weight", rnd((size_t)m.hidden * qkv, ws));
    write_f16(p + "attention.wo.0.weight", rnd((size_t)m.H * m.D * m.hidden, ws));
    if (m.bias) {
      write_f16(p + "attention.w_qkv.0.bias", rnd(qkv, 0.1f));
      write_f16(p + "attention.wo.0.bias", rnd(m.hidden, 0.1f));
    }
    write_f16(p + "feed_forward.w1.0.weight", rnd((size_t)m.hidden * m.I, ws));
    write_f16(p + "feed_forward.w3.0.weight", rnd((size_t)m.hidden * m.I, ws));
    write_f16(p + "feed_forward.w2.0.weight", rnd((size_t)m.I * m.hidden, 1.f / std::sqrt((float)m.I)));
  }
  return dir;
}

void remove_dir(const std::string& dir) { std::system(("rm -rf '" + dir + "'").c_str()); }

std::vector<int32_t> prompt(int n, int vocab) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 37 + 11) % vocab;
  return t;
}

std::vector<int32_t> table(int first, int n) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = first + i;
  return t;
}

// Logits of every token of `tokens`, fed in chunks of `chunk` tokens.
std::vector<float> run_chunked(LlamaModel& m, const std::vector<int32_t>& tokens, int chunk) {
  const int V = m.config().vocab_size;
  std::vector<int32_t> bt = table(0, 64);
  std::vector<float> all((size_t)tokens.size() * V);
  for (size_t s = 0; s < tokens.size(); s += chunk) {
    ForwardItem it;
    it.tokens = tokens.data() + s;
    it.n_tokens = (int)std::min(tokens.size() - s, (size_t)chunk);
    it.start_pos = (int)s;
    it.block_table = bt.data();
    it.logits = LogitsMode::kAll;
    m.forward({it}, all.data() + s * V);
  }
  return all;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, (double)std::fabs(a[i] - b[i]));
  return d;
}

TEST(forward_invariants) {
  Tiny t;
  const std::string dir = make_workspace(t);
  const auto tokens = prompt(23, t.vocab);

  LlamaModel m1(dir, ModelOptions{1, 2});
  CHECK_EQ(m1.kv_bytes_per_block(), (size_t)t.layers * 2 * t.KV * t.block * t.D * 2);
  m1.allocate_kv(64);
  const auto whole = run_chunked(m1, tokens, 1000);
  double mag = 0;
  for (float v : whole) { CHECK(std::isfinite(v)); mag = std::max(mag, (double)std::fabs(v)); }
  CHECK(mag > 0.1);
  // chunked prefill, then single-token decode steps (SIMD summation order depends on the rows)
  CHECK(max_diff(whole, run_chunked(m1, tokens, 5)) < 1e-3 * mag);
  CHECK(max_diff(whole, run_chunked(m1, tokens, 1)) < 1e-3 * mag);
  // with the reference kernels the model adds no step-dependent rounding: bit-identical
  {
    ModelOptions o{1, 2};
    o.reference_kernels = true;
    LlamaModel mr(dir, o);
    mr.allocate_kv(64);
    const auto ref_whole = run_chunked(mr, tokens, 1000);
    CHECK(max_diff(ref_whole, run_chunked(mr, tokens, 5)) == 0);
    CHECK(max_diff(ref_whole, run_chunked(mr, tokens, 1)) == 0);
    CHECK(max_diff(ref_whole, whole) < 1e-3 * mag);
  }

  // Two items in one batch (different lengths, kLast and kAll) equal each alone.
  {
    const auto other = prompt(9, t.vocab);
    std::vector<int32_t> bt_a = table(0, 8), bt_b = table(20, 8);
    ForwardItem a{tokens.data(), (int)tokens.size(), 0, bt_a.data(), LogitsMode::kLast};
    ForwardItem b{other.data(), (int)other.size(), 0, bt_b.data(), LogitsMode::kAll};
    std::vector<int32_t> bt_n = table(40, 2);
    ForwardItem none{other.data(), 3, 0, bt_n.data(), LogitsMode::kNone};
    std::vector<float> batch((1 + other.size()) * t.vocab);
    m1.forward({a, none, b}, batch.data());
    std::vector<float> alone_b(other.size() * t.vocab);
    m1.forward({b}, alone_b.data());
    std::vector<float> last_a(whole.end() - t.vocab, whole.end());
    CHECK(max_diff(std::vector<float>(batch.begin(), batch.begin() + t.vocab), last_a) < 1e-3 * mag);
    CHECK(max_diff(std::vector<float>(batch.begin() + t.vocab, batch.end()), alone_b) < 1e-3 * mag);
  }

  // A tp=1 workspace run at tp=2 (sliced at load), 1 and 2 threads per rank.
  for (int threads : {2, 4}) {
    LlamaModel m2(dir, ModelOptions{2, threads});
    CHECK_EQ(m2.tp(), 2);
    m2.allocate_kv(64);
    CHECK(max_diff(whole, run_chunked(m2, tokens, 1000)) < 1e-3 * mag);
    CHECK(max_diff(whole, run_chunked(m2, tokens, 7)) < 1e-3 * mag);
  }
  // tp must divide kv_head_num
  CHECK_THROWS(LlamaModel(dir, ModelOptions{4, 1}));
  // out-of-pool block ids are an error, not a crash
  {
    std::vector<int32_t> bad = {1000};
    ForwardItem it{tokens.data(), 2, 0, bad.data(), LogitsMode::kLast};
    std::vector<float> out(t.vocab);
    CHECK_THROWS(m1.forward({it}, out.data()));
  }
  remove_dir(dir);
}

std::string error_of(const std::string& dir) {
  try {
    LlamaModel m(dir, ModelOptions{1, 1});
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(workspace_errors_name_the_file) {
  Tiny t;
  t.layers = 1;
  {
    const std::string dir = make_workspace(t);
    ::unlink((dir + "/layers.0.feed_forward.w2.0.weight").c_str());
    const std::string e = error_of(dir);
    CHECK(e.find("layers.0.feed_forward.w2.0.weight") != std::string::npos);
    CHECK(e.find("missing") != std::string::npos);
    remove_dir(dir);
  }
  {
    const std::string dir = make_workspace(t);
    CHECK(::truncate((dir + "/layers.0.attention.w_qkv.0.weight").c_str(), 100) == 0);
    const std::string e = error_of(dir);
    CHECK(e.find("layers.0.attention.w_qkv.0.weight") != std::string::npos);
    CHECK(e.find("100 bytes") != std::string::npos);
    remove_dir(dir);
  }
  {
    const std::string dir = make_workspace(t);
    // an int4 workspace of an older layout (format_version 1) is refused, naming the version
    std::ofstream(dir + "/config.ini", std::ios::app) << "weight_type = int4\ngroup_size = 16\n";
    const std::string e = error_of(dir);
    CHECK(e.find("format_version 1") != std::string::npos);
    remove_dir(dir);
  }
}

}  // namespace

int main() { return check::run_all(); }
