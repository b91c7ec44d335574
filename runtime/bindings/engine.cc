// Binding of the Engine and its Streams. Token ids and settings go in, token ids, logprobs and a
// finish reason come out. Every call that can wait releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <type_traits>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/token_mask.h"

namespace py = pybind11;
using namespace turbolm;

namespace {

GenerationConfig gen_from_kwargs(const py::dict& d) {
  GenerationConfig g;
  // A value of the wrong type or range (top_k = 10**14 does not fit an int) is a ValueError that
  // names the setting, not a pybind11 cast error.
  auto set = [&](const char* k, auto& field) {
    if (!d.contains(k) || d[k].is_none()) return;
    try {
      field = d[k].cast<std::decay_t<decltype(field)>>();
    } catch (const py::cast_error&) {
      throw py::value_error(std::string("generation setting ") + k + " = " + py::repr(d[k]).cast<std::string>() +
                            " has the wrong type or is out of range");
    }
  };
  set("max_new_tokens", g.max_new_tokens);
  set("top_k", g.top_k);
  set("top_p", g.top_p);
  set("temperature", g.temperature);
  set("repetition_penalty", g.repetition_penalty);
  set("presence_penalty", g.presence_penalty);
  set("frequency_penalty", g.frequency_penalty);
  set("logit_bias", g.logit_bias);
  set("random_seed", g.random_seed);
  set("ignore_eos", g.ignore_eos);
  set("stop_sequences", g.stop_sequences);
  set("logprobs", g.logprobs);
  set("top_logprobs", g.top_logprobs);
  set("prompt_logprobs", g.prompt_logprobs);
  if (d.contains("token_mask") && !d["token_mask"].is_none()) {
    try {
      g.token_mask = d["token_mask"].cast<std::shared_ptr<TokenMask>>();
    } catch (const py::cast_error&) {
      throw py::value_error("generation setting token_mask must be a TokenMask");
    }
  }
  return g;
}

// Logprobs cross as plain Python values: [float] for the chosen tokens, and [[(id, logprob)]]
// alternatives (None when no token has any) -- built only for what the request asked for.
py::object tops_of(const std::vector<TokenLogprob>& lps) {
  bool any = false;
  for (const auto& t : lps) any = any || !t.top.empty();
  if (!any) return py::none();
  py::list out;
  for (const auto& t : lps) out.append(py::cast(t.top));
  return out;
}

std::vector<float> chosen_of(const std::vector<TokenLogprob>& lps) {
  std::vector<float> out(lps.size());
  for (size_t i = 0; i < lps.size(); ++i) out[i] = lps[i].logprob;
  return out;
}

// (ids, logprobs, finish, error, total, top_logprobs, prompt_logprobs, cached_tokens);
// prompt_logprobs is None or ([float] for prompt tokens 1.., their alternatives as top_logprobs is).
py::tuple tail_tuple(const Output& t, size_t total) {
  py::object prompt = py::none();
  if (!t.prompt_logprobs.empty()) prompt = py::make_tuple(chosen_of(t.prompt_logprobs), tops_of(t.prompt_logprobs));
  return py::make_tuple(t.token_ids, chosen_of(t.logprobs), std::string(to_string(t.finish)), t.error, total,
                        tops_of(t.logprobs), prompt, t.cached_tokens);
}

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<Stream, std::shared_ptr<Stream>>(m, "Stream")
      .def(
          "wait",
          [](Stream& s, size_t seen, int timeout_ms) {
            Output out;
            bool ok;
            {
              py::gil_scoped_release release;
              ok = s.wait(seen, out, timeout_ms);
            }
            return py::make_tuple(out.token_ids, chosen_of(out.logprobs), std::string(to_string(out.finish)),
                                  out.error, ok);
          },
          py::arg("seen"), py::arg("timeout_ms") = -1,
          "Block until more than `seen` tokens or the finish; returns (ids, logprobs, finish, error, in_time).")
      .def(
          "tail",
          [](Stream& s, size_t from) {
            Output t;
            size_t total = 0;
            s.wait_tail(from, t, total, 0);  // never blocks: the lock is held for a copy only
            return tail_tuple(t, total);
          },
          py::arg("from_"),
          "Tokens from index `from_` on, without waiting; returns (ids, logprobs, finish, error, total, "
          "top_logprobs, prompt_logprobs, cached_tokens).")
      .def(
          "wait_tail",
          [](Stream& s, size_t from, int timeout_ms) {
            Output t;
            size_t total = 0;
            {
              py::gil_scoped_release release;
              s.wait_tail(from, t, total, timeout_ms);
            }
            return tail_tuple(t, total);
          },
          py::arg("from_"), py::arg("timeout_ms") = -1,
          "Block until there are tokens past `from_` or the finish (or the timeout); returns (ids, logprobs, "
          "finish, error, total, top_logprobs, prompt_logprobs, cached_tokens) with only the new ids.")
      .def("finished", &Stream::finished)
      .def("set_notifier", &Stream::set_notifier, py::arg("notifier"), py::arg("tag") = 0,
           "Mark `tag` on `notifier` whenever this stream has news (None: detach).");

  py::class_<Notifier, std::shared_ptr<Notifier>>(m, "Notifier",
                                                  "An eventfd plus the tags of streams with news since drain().")
      .def(py::init<>())
      .def_property_readonly("fd", &Notifier::fd)
      .def("drain", &Notifier::drain, "Tags marked since the last call (also resets the eventfd).");

  py::class_<MaskQueue, std::shared_ptr<MaskQueue>>(
      m, "MaskQueue", "Jobs (tag, token, mask) for structured-output workers: see engine/token_mask.h.")
      .def(py::init<>())
      .def(
          "pop",
          [](MaskQueue& q, int timeout_ms) -> py::object {
            MaskQueue::Job job;
            bool ok;
            {
              py::gil_scoped_release release;
              ok = q.pop(job, timeout_ms);
            }
            if (!ok) return py::none();
            return py::make_tuple(job.tag, job.token, job.mask);
          },
          py::arg("timeout_ms") = -1, "The next job as (tag, token, mask), or None on timeout / once closed.")
      .def("close", &MaskQueue::close, py::call_guard<py::gil_scoped_release>(),
           "Fail every pending and later mask (their requests end with an error); wake the workers.")
      .def_property_readonly("closed", &MaskQueue::closed);

  py::class_<TokenMask, std::shared_ptr<TokenMask>>(m, "TokenMask",
                                                    "The allowed next tokens of one structured-output request.")
      .def(py::init<int, std::shared_ptr<MaskQueue>, uint64_t>(), py::arg("vocab"), py::arg("queue"), py::arg("tag"))
      .def_property_readonly("vocab", &TokenMask::vocab)
      .def_property_readonly("tag", &TokenMask::tag)
      .def(
          "buffer",
          [](py::object self) {
            TokenMask& t = self.cast<TokenMask&>();
            // A view of the mask's words (uint32 [words]), kept alive by the mask object.
            return py::array_t<uint32_t>({(py::ssize_t)t.words()}, {(py::ssize_t)sizeof(uint32_t)}, t.buffer(), self);
          },
          "The words to fill for the next token (a numpy view; write it before publish()).")
      .def("publish", &TokenMask::publish, py::arg("ok") = true, py::arg("error") = "",
           py::call_guard<py::gil_scoped_release>(), "The mask in buffer() is ready (ok=False: fail the request).");

  py::class_<Engine>(m, "Engine")
      .def(py::init([](const std::string& weights_dir, int tp, int num_threads, int max_batch_size, int session_len,
                       int max_context_token_num, float cache_max_entry_count, const std::string& act_type) {
             EngineOptions o;
             o.model.tp = tp;
             o.model.num_threads = num_threads;
             o.model.act_type = act_type;
             o.max_batch_size = max_batch_size;
             o.session_len = session_len;
             o.max_context_token_num = max_context_token_num;
             o.cache_max_entry_count = cache_max_entry_count;
             py::gil_scoped_release release;
             return std::make_unique<Engine>(weights_dir, o);
           }),
           py::arg("weights_dir"), py::arg("tp") = 0, py::arg("num_threads") = 0, py::arg("max_batch_size") = 0,
           py::arg("session_len") = 0, py::arg("max_context_token_num") = 0, py::arg("cache_max_entry_count") = -1.f,
           py::arg("act_type") = "")
      .def("config", [](const Engine& e) { return e.config().to_map(); })
      .def(
          "submit",
          [](Engine& e, uint64_t session_id, std::vector<int32_t> input_ids, bool sequence_start, bool sequence_end,
             int step, const py::dict& gen) {
            Request r;
            r.session_id = session_id;
            r.input_ids = std::move(input_ids);
            r.sequence_start = sequence_start;
            r.sequence_end = sequence_end;
            r.step = step;
            r.gen = gen_from_kwargs(gen);
            py::gil_scoped_release release;
            return e.submit(r);
          },
          py::arg("session_id"), py::arg("input_ids"), py::arg("sequence_start") = true,
          py::arg("sequence_end") = true, py::arg("step") = -1, py::arg("gen") = py::dict())
      .def(
          "stop",
          [](Engine& e, uint64_t sid, bool end) {
            py::gil_scoped_release release;
            e.stop(sid, end);
          },
          py::arg("session_id"), py::arg("end") = false)
      .def(
          "end",
          [](Engine& e, uint64_t sid) {
            py::gil_scoped_release release;
            e.end(sid);
          },
          py::arg("session_id"))
      .def(
          "get_ppl",
          [](Engine& e, const std::vector<std::vector<int32_t>>& ids) {
            py::gil_scoped_release release;
            return e.get_ppl(ids);
          },
          py::arg("input_ids"))
      .def("stats", [](const Engine& e) {
        auto s = e.stats();
        py::dict d;
        d["num_blocks"] = s.num_blocks;
        d["free_blocks"] = s.free_blocks;
        d["cached_blocks"] = s.cached_blocks;
        d["running"] = s.running;
        d["waiting"] = s.waiting;
        d["block_len"] = s.block_len;
        d["max_batch_size"] = s.max_batch_size;
        d["max_num_tokens"] = s.max_num_tokens;
        d["session_len"] = s.session_len;
        d["steps"] = s.steps;
        d["tokens_computed"] = s.tokens_computed;
        d["tokens_generated"] = s.tokens_generated;
        d["preemptions"] = s.preemptions;
        d["pooled_blocks"] = s.pooled_blocks;
        d["prefix_cached_tokens"] = s.prefix_cached_tokens;
        return d;
      });
}
