// Engine::Impl: the engine thread and its persistent batch loop. See README.md in this folder.
#include "engine/engine.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "engine/block_manager.h"
#include "engine/model_backend.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/token_mask.h"

namespace turbolm {
namespace {

constexpr int kCpuTokenBudget = 512;              // tokens per step when config.ini has no usable value
constexpr size_t kPplLogitsBytes = 64u << 20;     // logits buffer of one get_ppl chunk at most
constexpr int kMaskTimeoutMs = 30000;             // a structured-output mask later than this fails the request

// /proc/meminfo's MemAvailable in bytes; 0 if it cannot be read.
size_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  size_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

// -log softmax(row)[target], all in double.
double nll_at(const float* row, int vocab, int32_t target) {
  double m = *std::max_element(row, row + vocab), sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp((double)row[i] - m);
  return m + std::log(sum) - (double)row[target];
}

struct PplJob {
  std::vector<std::vector<int32_t>> inputs;
  std::promise<std::vector<double>> result;
};

// What callers hand to the engine thread; handled in arrival order between steps.
struct Command {
  enum class Kind { kSubmit, kStop, kEnd, kPpl };
  explicit Command(Kind k) : kind(k) {}
  Kind kind;
  Request req;
  std::shared_ptr<Stream> stream;
  uint64_t session_id = 0;
  bool end = false;
  std::shared_ptr<PplJob> ppl;
};

std::string check_ids(const std::vector<int32_t>& ids, int vocab, const char* what) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab) {
      std::ostringstream os;
      os << what << "[" << i << "] = " << ids[i] << " is out of the vocabulary [0, " << vocab << ")";
      return os.str();
    }
  return "";
}

// The checks that need no session state; the engine thread checks the rest (Scheduler::add).
std::string validate(const Request& r, int vocab, int session_len) {
  std::string e = check_ids(r.input_ids, vocab, "input_ids");
  if (!e.empty()) return e;
  const GenerationConfig& g = r.gen;
  std::ostringstream os;
  if (r.sequence_start && r.input_ids.empty())
    os << "input_ids is empty: a new session (sequence_start=true) needs at least one token";
  else if (r.sequence_start && (int)r.input_ids.size() > session_len)
    os << "the prompt has " << r.input_ids.size() << " tokens, more than session_len " << session_len;
  else if (g.max_new_tokens < 0)
    os << "max_new_tokens (request_output_len) is " << g.max_new_tokens << "; it must be >= 0";
  else if (g.top_k < 0)
    os << "top_k is " << g.top_k << "; it must be >= 0 (0: no top-k)";
  else if (!(g.top_p >= 0.f))
    os << "top_p is " << g.top_p << "; it must be in [0, 1]";
  else if (!(g.repetition_penalty > 0.f))
    os << "repetition_penalty is " << g.repetition_penalty << "; it must be > 0";
  else if (!(std::fabs(g.presence_penalty) <= 2.f) || !(std::fabs(g.frequency_penalty) <= 2.f))
    os << "presence_penalty and frequency_penalty must be in [-2, 2]";
  else if (std::isnan(g.temperature))
    os << "temperature is NaN";
  else if (g.top_logprobs < 0 || g.top_logprobs > kMaxTopLogprobs)
    os << "top_logprobs is " << g.top_logprobs << "; it must be in [0, " << kMaxTopLogprobs << "]";
  else if (g.prompt_logprobs < -1 || g.prompt_logprobs > kMaxTopLogprobs)
    os << "prompt_logprobs is " << g.prompt_logprobs << "; it must be -1 (none) or in [0, " << kMaxTopLogprobs << "]";
  else if (g.token_mask && g.token_mask->vocab() != vocab)
    os << "token_mask covers " << g.token_mask->vocab() << " tokens; the model's vocabulary has " << vocab;
  else if (g.prompt_logprobs >= 0 && !r.sequence_start)
    os << "prompt_logprobs needs sequence_start=true (the logprobs of a whole prompt)";
  else
    for (size_t i = 0; i < g.stop_sequences.size(); ++i)
      if (g.stop_sequences[i].empty()) {
        os << "stop_sequences[" << i << "] is empty";
        break;
      }
  if (os.tellp() == 0)
    for (const auto& [tok, bias] : g.logit_bias)
      if (tok < 0 || tok >= vocab || !(std::fabs(bias) <= 100.f)) {
        os << "logit_bias: token " << tok << " must be in [0, " << vocab << ") and its bias in [-100, 100]";
        break;
      }
  return os.str();
}

}  // namespace

struct Engine::Impl {
  std::unique_ptr<ModelBackend> model;
  ModelConfig cfg;  // the model's, with session_len / max_batch_size / max_context_token_num as used
  int vocab = 0;
  std::unique_ptr<BlockManager> blocks;
  std::unique_ptr<Scheduler> sched;

  // Shared with callers.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Command> queue;
  bool stopping = false;
  mutable std::mutex stats_mu;
  Stats stats{};

  // Engine thread only.
  std::vector<ForwardItem> items;
  std::vector<float> logits;
  std::vector<Sequence*> sampled;  // the step's sampling sequences, in batch order
  std::vector<int> sample_rows;    // [sampled.size()] their logits rows
  struct PromptJob {
    Sequence* seq;
    int row;   // logits row
    int next;  // the prompt position it scores: logprob of seq->tokens[next]
  };
  std::vector<PromptJob> prompt_jobs;  // prompt logprobs to record this step, in position order per seq
  long long steps = 0, tokens_computed = 0, tokens_generated = 0;
  std::thread thread;

  void enqueue(Command c) {
    {
      std::lock_guard<std::mutex> lk(mu);
      queue.push_back(std::move(c));
    }
    cv.notify_one();
  }
  void run();
  void handle(Command& c);
  void step();
  std::vector<double> run_ppl(const PplJob& job);
  void publish();
};

Engine::Engine(std::unique_ptr<ModelBackend> model, const EngineOptions& opts) : impl_(new Impl) {
  TURBOLM_CHECK(model != nullptr, "Engine: no model");
  Impl& m = *impl_;
  m.model = std::move(model);
  m.cfg = m.model->config();
  m.vocab = m.cfg.vocab_size;
  const int block_len = m.cfg.cache_block_seq_len;
  TURBOLM_CHECK(block_len > 0, "Engine: cache_block_seq_len must be > 0, got ", block_len);
  TURBOLM_CHECK(m.vocab > 0, "Engine: vocab_size must be > 0");
  const int session_len = opts.session_len > 0 ? opts.session_len : m.cfg.session_len;
  const int max_batch = opts.max_batch_size > 0 ? opts.max_batch_size : m.cfg.max_batch_size;
  TURBOLM_CHECK(session_len > 0 && max_batch > 0, "Engine: session_len and max_batch_size must be > 0");
  int budget = opts.max_context_token_num;
  if (budget <= 0) {
    budget = m.cfg.max_context_token_num;
    if (budget < block_len) budget = kCpuTokenBudget;  // LMDeploy's default of 1 means "unset" here
  }
  budget = std::max(budget, max_batch);  // every running decode fits in a step

  // KV pool: a fraction of available memory, or a block count; at least one full session.
  const float cme = opts.cache_max_entry_count >= 0 ? opts.cache_max_entry_count : m.cfg.cache_max_entry_count;
  const long long per_session = (session_len + block_len - 1) / block_len;
  long long num_blocks;
  if (cme >= 1.f) {
    num_blocks = (long long)cme;
  } else {
    size_t per_block = std::max<size_t>(1, m.model->kv_bytes_per_block());
    num_blocks = (long long)((double)cme * (double)mem_available_bytes() / (double)per_block);
    // More than max_batch_size full sessions could only ever hold idle sessions.
    num_blocks = std::min(num_blocks, (long long)max_batch * per_session);
  }
  num_blocks = std::min<long long>(std::max(num_blocks, per_session), INT_MAX / 2);
  m.model->allocate_kv((int)num_blocks);

  m.cfg.session_len = session_len;
  m.cfg.max_batch_size = max_batch;
  m.cfg.max_context_token_num = budget;
  m.blocks = std::make_unique<BlockManager>((int)num_blocks, block_len, m.cfg.enable_prefix_caching != 0);
  SchedulerConfig sc;
  sc.max_batch_size = max_batch;
  sc.max_num_tokens = budget;
  sc.session_len = session_len;
  sc.end_id = m.cfg.end_id;
  sc.defer_delivery = true;  // outputs reach the streams after publish(): see Impl::run
  m.sched = std::make_unique<Scheduler>(sc, *m.blocks);
  m.publish();
  m.thread = std::thread([&m] { m.run(); });
}

Engine::~Engine() {
  if (!impl_) return;
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    m.stopping = true;
  }
  m.cv.notify_all();
  if (m.thread.joinable()) m.thread.join();
  // The engine thread is gone: this thread owns the scheduler now.
  for (Command& c : m.queue) {
    if (c.kind == Command::Kind::kSubmit) c.stream->finish(FinishReason::kCancelled, "engine stopped");
    if (c.kind == Command::Kind::kPpl)
      c.ppl->result.set_exception(std::make_exception_ptr(Error("get_ppl: engine stopped")));
  }
  m.queue.clear();
  m.sched->cancel_all();
  m.sched->deliver();
}

const ModelConfig& Engine::config() const { return impl_->cfg; }

std::shared_ptr<Stream> Engine::submit(const Request& req) {
  auto stream = std::make_shared<Stream>();
  std::string err = validate(req, impl_->vocab, impl_->cfg.session_len);
  if (!err.empty()) {
    stream->finish(FinishReason::kError, "session " + std::to_string(req.session_id) + ": " + err);
    return stream;
  }
  Command c(Command::Kind::kSubmit);
  c.req = req;
  c.stream = stream;
  impl_->enqueue(std::move(c));
  return stream;
}

void Engine::stop(uint64_t session_id, bool end) {
  Command c(Command::Kind::kStop);
  c.session_id = session_id;
  c.end = end;
  impl_->enqueue(std::move(c));
}

void Engine::end(uint64_t session_id) {
  Command c(Command::Kind::kEnd);
  c.session_id = session_id;
  impl_->enqueue(std::move(c));
}

std::vector<double> Engine::get_ppl(const std::vector<std::vector<int32_t>>& input_ids) {
  for (size_t i = 0; i < input_ids.size(); ++i) {
    const auto& ids = input_ids[i];
    TURBOLM_CHECK(ids.size() >= 2, "get_ppl: sequence ", i, " has ", ids.size(), " tokens; at least 2 are needed");
    TURBOLM_CHECK((int)ids.size() <= impl_->cfg.session_len, "get_ppl: sequence ", i, " has ", ids.size(),
                  " tokens, more than session_len ", impl_->cfg.session_len, "; split it");
    std::string e = check_ids(ids, impl_->vocab, "input_ids");
    TURBOLM_CHECK(e.empty(), "get_ppl: sequence ", i, ": ", e);
  }
  auto job = std::make_shared<PplJob>();
  job->inputs = input_ids;
  std::future<std::vector<double>> result = job->result.get_future();
  Command c(Command::Kind::kPpl);
  c.ppl = job;
  impl_->enqueue(std::move(c));
  return result.get();  // rethrows the engine thread's error
}

Engine::Stats Engine::stats() const {
  std::lock_guard<std::mutex> lk(impl_->stats_mu);
  return impl_->stats;
}

// ---------------------------------------------------------------- engine thread

void Engine::Impl::run() {
  for (;;) {
    std::deque<Command> cmds;
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] { return stopping || !queue.empty() || sched->has_work(); });  // idle: sleep
      if (stopping) return;
      cmds.swap(queue);
    }
    for (Command& c : cmds) handle(c);
    if (!cmds.empty()) {  // a stop/end shows in stats() without waiting for a step
      publish();
      sched->deliver();
    }
    try {
      step();
    } catch (const std::exception& e) {
      // A broken invariant in the scheduler or block manager: fail everything in flight rather
      // than let the exception end the engine thread (and the process); new requests still run.
      sched->cancel_all(FinishReason::kError, std::string("engine step failed: ") + e.what());
    }
    // Stats first, then the step's tokens and finishes: a caller that sees its request finish
    // reads stats() that already count it (free blocks, running, tokens_generated).
    publish();
    sched->deliver();
  }
}

void Engine::Impl::handle(Command& c) {
  try {
    switch (c.kind) {
      case Command::Kind::kSubmit: sched->add(c.req, c.stream); break;
      case Command::Kind::kStop: sched->stop(c.session_id, c.end); break;
      case Command::Kind::kEnd: sched->end(c.session_id); break;
      case Command::Kind::kPpl: c.ppl->result.set_value(run_ppl(*c.ppl)); break;
    }
  } catch (const std::exception& e) {
    if (c.kind == Command::Kind::kSubmit) {
      publish();  // as everywhere: stats before the finish a caller can see
      c.stream->finish(FinishReason::kError, e.what());
    }
    if (c.kind == Command::Kind::kPpl) c.ppl->result.set_exception(std::current_exception());
  }
}

void Engine::Impl::step() {
  std::vector<ScheduledSeq> batch = sched->schedule();
  if (batch.empty()) return;
  items.clear();
  sampled.clear();
  sample_rows.clear();
  prompt_jobs.clear();
  int rows = 0;  // logits rows: kLast gives 1 per item, kAll n_tokens, kNone 0
  for (const ScheduledSeq& b : batch) {
    Sequence& s = *b.seq;
    ForwardItem it;
    it.tokens = s.tokens.data() + s.num_cached;
    it.n_tokens = b.n_tokens;
    it.start_pos = s.num_cached;
    it.block_table = s.block_table.data();
    // Mid-prompt chunks need no logits, unless the prompt's own logprobs are wanted.
    it.logits = s.wants_prompt_logprobs() ? LogitsMode::kAll : b.sample ? LogitsMode::kLast : LogitsMode::kNone;
    if (it.logits == LogitsMode::kAll) {
      // row i predicts position start_pos + i + 1; record the prompt positions not recorded yet
      // (a recompute after preemption sees them again)
      const int first = (int)s.prompt_lps.size() + 1;  // the first prompt token not scored yet
      for (int i = 0; i < it.n_tokens; ++i) {
        const int next = it.start_pos + i + 1;  // the prompt token this row scores
        if (next >= first && next < s.prompt_len) prompt_jobs.push_back({&s, rows + i, next});
      }
    }
    const int n_rows = it.logits == LogitsMode::kAll ? it.n_tokens : it.logits == LogitsMode::kLast ? 1 : 0;
    if (b.sample) {
      sampled.push_back(&s);
      sample_rows.push_back(rows + n_rows - 1);
    }
    rows += n_rows;
    items.push_back(it);
    tokens_computed += b.n_tokens;
  }
  logits.resize((size_t)std::max(rows, 1) * vocab);
  try {
    model->forward(items, logits.data());
  } catch (const std::exception& e) {
    sched->fail(batch, std::string("model forward failed: ") + e.what());
    return;
  }
  // Prompt logprobs first: they read raw rows that sampling modifies in place (the last row of a
  // prompt is both). Each job's row and slot are its own, so they run in parallel.
  std::vector<TokenLogprob> prompt_out(prompt_jobs.size());
  if (!prompt_jobs.empty()) {  // most steps have none: no std::function built for nothing
    model->parallel_for((int)prompt_jobs.size(), [&](int begin, int end) {
      for (int j = begin; j < end; ++j) {
        const PromptJob& pj = prompt_jobs[j];
        prompt_out[j] = token_logprob(&logits[(size_t)pj.row * vocab], vocab, pj.seq->tokens[pj.next],
                                      pj.seq->gen.prompt_logprobs);
      }
    });
  }
  for (size_t j = 0; j < prompt_jobs.size(); ++j) prompt_jobs[j].seq->prompt_lps.push_back(std::move(prompt_out[j]));
  // Rows are independent (each has its own sequence, settings and generator), so they are
  // sampled in parallel on the model's pool, which is idle between forwards. A row with a
  // structured-output mask waits for it here (its worker computed it during the forward).
  const int n_sampled = (int)sampled.size();
  std::vector<int32_t> tokens(n_sampled);
  std::vector<TokenLogprob> logprobs(n_sampled);
  std::vector<uint8_t> mask_failed(n_sampled, 0);
  model->parallel_for(n_sampled, [&](int begin, int end) {
    for (int r = begin; r < end; ++r) {
      Sequence& s = *sampled[r];
      const uint32_t* allowed = nullptr;
      if (s.gen.token_mask) {
        if (!s.gen.token_mask->wait(kMaskTimeoutMs)) {
          mask_failed[r] = 1;
          continue;
        }
        allowed = s.gen.token_mask->bits();
      }
      SampleResult res = sample(&logits[(size_t)sample_rows[r] * vocab], vocab, s.gen, s.tokens, s.rng, s.prompt_len,
                                allowed);
      tokens[r] = res.token;
      logprobs[r].logprob = res.logprob;
      logprobs[r].top = std::move(res.top);
    }
  });
  // The next mask is computed while the next step runs. A failed mask ends its request.
  std::vector<ScheduledSeq> failed;
  for (int r = 0; r < n_sampled; ++r)
    if (sampled[r]->gen.token_mask && !mask_failed[r]) sampled[r]->gen.token_mask->advance(tokens[r]);
  if (std::find(mask_failed.begin(), mask_failed.end(), 1) != mask_failed.end()) {
    std::vector<ScheduledSeq> kept;
    std::vector<int32_t> kept_tokens;
    std::vector<TokenLogprob> kept_lps;
    for (const ScheduledSeq& b : batch) {
      auto it = std::find(sampled.begin(), sampled.end(), b.seq);
      const int r = b.sample && it != sampled.end() ? (int)(it - sampled.begin()) : -1;
      if (r >= 0 && mask_failed[r]) {
        sched->fail({b}, "structured output: " + b.seq->gen.token_mask->error());
        continue;
      }
      kept.push_back(b);
      if (r >= 0) {
        kept_tokens.push_back(tokens[r]);
        kept_lps.push_back(std::move(logprobs[r]));
      }
    }
    batch.swap(kept);
    tokens.swap(kept_tokens);
    logprobs.swap(kept_lps);
  }
  tokens_generated += (long long)tokens.size();
  ++steps;
  sched->postprocess(batch, tokens, std::move(logprobs));
}

// Runs each sequence through the model with logits for every position, in chunks of the step's
// token budget, between two steps of the batch. Its blocks come from the pool like anyone's:
// idle sessions are evicted and, if that is not enough, running sequences preempted.
std::vector<double> Engine::Impl::run_ppl(const PplJob& job) {
  std::vector<double> out;
  const int chunk = std::max(1, std::min(sched->config().max_num_tokens, (int)(kPplLogitsBytes / (sizeof(float) * vocab))));
  for (const auto& ids : job.inputs) {
    const int len = (int)ids.size();
    Sequence tmp;
    tmp.status = SequenceStatus::kRunning;
    const int need = blocks->blocks_for(len);
    while (!blocks->can_allocate(need))
      TURBOLM_CHECK(sched->preempt_latest(), "get_ppl: the pool of ", blocks->num_blocks(), " blocks cannot hold ",
                    len, " tokens");
    blocks->allocate(tmp, len);  // free -> active
    double nll = 0;
    try {
      for (int pos = 0; pos < len; pos += chunk) {
        const int n = std::min(chunk, len - pos);
        ForwardItem it;
        it.tokens = ids.data() + pos;
        it.n_tokens = n;
        it.start_pos = pos;
        it.block_table = tmp.block_table.data();
        it.logits = LogitsMode::kAll;
        logits.resize((size_t)n * vocab);
        model->forward({it}, logits.data());
        for (int i = 0; i < n && pos + i + 1 < len; ++i)
          nll += nll_at(&logits[(size_t)i * vocab], vocab, ids[pos + i + 1]);
        tmp.num_cached = pos + n;
      }
    } catch (...) {
      blocks->deallocate(tmp);  // active -> free
      throw;
    }
    blocks->deallocate(tmp);  // active -> free
    out.push_back(std::exp(nll / (len - 1)));
  }
  return out;
}

void Engine::Impl::publish() {
  std::lock_guard<std::mutex> lk(stats_mu);
  stats.num_blocks = blocks->num_blocks();
  stats.free_blocks = blocks->num_free();
  stats.cached_blocks = blocks->num_cached();
  stats.running = sched->num_running();
  stats.waiting = sched->num_waiting();
  stats.block_len = blocks->block_len();
  stats.max_batch_size = sched->config().max_batch_size;
  stats.max_num_tokens = sched->config().max_num_tokens;
  stats.session_len = sched->config().session_len;
  stats.steps = steps;
  stats.tokens_computed = tokens_computed;
  stats.tokens_generated = tokens_generated;
  stats.preemptions = sched->num_preemptions();
  stats.pooled_blocks = blocks->num_pooled();
  stats.prefix_cached_tokens = sched->num_reused_tokens();
}

}  // namespace turbolm
