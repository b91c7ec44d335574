// Binding of the Engine and its Streams. Token ids and settings go in, token ids, logprobs and a
// finish reason come out. Every call that can wait releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/error.h"
#include "engine/engine.h"

namespace py = pybind11;
using namespace turbolm;

namespace {

GenerationConfig gen_from_kwargs(const py::dict& d) {
  GenerationConfig g;
  auto get = [&](const char* k) -> py::object { return d.contains(k) ? py::object(d[k]) : py::none(); };
  if (auto v = get("max_new_tokens"); !v.is_none()) g.max_new_tokens = v.cast<int>();
  if (auto v = get("top_k"); !v.is_none()) g.top_k = v.cast<int>();
  if (auto v = get("top_p"); !v.is_none()) g.top_p = v.cast<float>();
  if (auto v = get("temperature"); !v.is_none()) g.temperature = v.cast<float>();
  if (auto v = get("repetition_penalty"); !v.is_none()) g.repetition_penalty = v.cast<float>();
  if (auto v = get("random_seed"); !v.is_none()) g.random_seed = v.cast<uint64_t>();
  if (auto v = get("ignore_eos"); !v.is_none()) g.ignore_eos = v.cast<bool>();
  if (auto v = get("stop_sequences"); !v.is_none()) g.stop_sequences = v.cast<std::vector<std::vector<int32_t>>>();
  if (auto v = get("logprobs"); !v.is_none()) g.logprobs = v.cast<bool>();
  return g;
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
            return py::make_tuple(out.token_ids, out.logprobs, std::string(to_string(out.finish)), out.error, ok);
          },
          py::arg("seen"), py::arg("timeout_ms") = -1,
          "Block until more than `seen` tokens or the finish; returns (ids, logprobs, finish, error, in_time).")
      .def("finished", &Stream::finished)
      .def("set_notify_fd", &Stream::set_notify_fd, py::arg("fd"));

  py::class_<Engine>(m, "Engine")
      .def(py::init([](const std::string& weights_dir, int tp, int num_threads, int max_batch_size, int session_len,
                       int max_context_token_num, float cache_max_entry_count) {
             EngineOptions o;
             o.model.tp = tp;
             o.model.num_threads = num_threads;
             o.max_batch_size = max_batch_size;
             o.session_len = session_len;
             o.max_context_token_num = max_context_token_num;
             o.cache_max_entry_count = cache_max_entry_count;
             py::gil_scoped_release release;
             return std::make_unique<Engine>(weights_dir, o);
           }),
           py::arg("weights_dir"), py::arg("tp") = 0, py::arg("num_threads") = 0, py::arg("max_batch_size") = 0,
           py::arg("session_len") = 0, py::arg("max_context_token_num") = 0, py::arg("cache_max_entry_count") = -1.f)
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
        return d;
      });
}
