// _turbomind.LlamaModel: the model forward alone, without the engine, for tests (HF oracle
// comparisons, TP equivalence). Production code goes through the engine binding.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "model/llama.h"

namespace py = pybind11;

namespace {

using turbolm::ForwardItem;
using turbolm::LlamaModel;
using turbolm::LogitsMode;

// items: [(tokens, start_pos, block_table, logits_mode)] -> float32 [rows, vocab]
py::array_t<float> forward(LlamaModel& m, const std::vector<std::tuple<std::vector<int32_t>, int, std::vector<int32_t>, int>>& items) {
  const auto& cfg = m.config();
  std::vector<ForwardItem> batch;
  size_t rows = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& [tokens, start_pos, table, mode] = items[i];
    if (mode < 0 || mode > 2) turbolm::fail("forward: item ", i, " logits_mode ", mode, " is not 0 (none), 1 (last) or 2 (all)");
    const int len = start_pos + (int)tokens.size();
    const int need = (len + cfg.cache_block_seq_len - 1) / cfg.cache_block_seq_len;
    if ((int)table.size() < need)
      turbolm::fail("forward: item ", i, " covers ", len, " positions and needs ", need, " blocks, its block_table has ",
                    table.size());
    ForwardItem it;
    it.tokens = tokens.data();
    it.n_tokens = (int)tokens.size();
    it.start_pos = start_pos;
    it.block_table = table.data();
    it.logits = (LogitsMode)mode;
    rows += mode == 2 ? tokens.size() : (mode == 1 ? 1 : 0);
    batch.push_back(it);
  }
  py::array_t<float> out({(py::ssize_t)rows, (py::ssize_t)cfg.vocab_size});
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    m.forward(batch, dst);
  }
  return out;
}

}  // namespace

void bind_model(py::module_& m) {
  py::class_<LlamaModel>(m, "LlamaModel", "The model forward alone (tests); see runtime/model/llama.h.")
      .def(py::init([](const std::string& dir, int tp, int num_threads, bool reference_kernels,
                       const std::string& act_type) {
             py::gil_scoped_release release;  // loading maps and repacks every weight file
             return std::make_unique<LlamaModel>(dir,
                                                 turbolm::ModelOptions{tp, num_threads, reference_kernels, act_type});
           }),
           py::arg("weights_dir"), py::arg("tp") = 0, py::arg("num_threads") = 0, py::arg("reference_kernels") = false,
           py::arg("act_type") = "")
      .def_property_readonly("config", [](const LlamaModel& self) { return self.config().to_map(); })
      .def_property_readonly("tp", &LlamaModel::tp)
      .def("kv_bytes_per_block", &LlamaModel::kv_bytes_per_block)
      .def("allocate_kv", &LlamaModel::allocate_kv, py::arg("num_blocks"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_kv_blocks", &LlamaModel::num_kv_blocks)
      .def("forward", &forward, py::arg("items"),
           "items: [(tokens, start_pos, block_table, logits_mode 0 none | 1 last | 2 all)]; returns float32 [rows, vocab]");
}
