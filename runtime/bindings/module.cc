// pybind11 module turbolm._turbomind: the only door between Python and the runtime.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/config.h"
#include "core/error.h"
#include "kernels/isa.h"
#include "kernels/kernels.h"
#include "kernels/qgemm.h"

namespace py = pybind11;

void bind_model(pybind11::module_&);   // bindings/model.cc
void bind_engine(pybind11::module_&);  // bindings/engine.cc

PYBIND11_MODULE(_turbomind, m) {
  m.doc() = "turbolm C++ runtime";
  py::register_exception<turbolm::Error>(m, "EngineError", PyExc_RuntimeError);
  m.def("read_config", [](const std::string& path) { return turbolm::load_config(path).to_map(); },
        py::arg("path"), "Parse a workspace config.ini with the runtime's loader; returns {key: text}.");
  m.def(
      "cpu_features",
      [] {
        namespace k = turbolm::kernels;
        py::dict d;
        d["avx2"] = k::cpu_has_avx2();
        d["avx512"] = k::cpu_has_avx512();
        d["avx512_bf16"] = k::cpu_has_avx512_bf16();
        d["avx512_vnni"] = k::cpu_has_avx512_vnni();
        d["amx_int8"] = k::cpu_has_amx_int8();
        d["kernels"] = k::best_kernels().name;
        d["qkernels"] = k::best_qkernels().name;
        return d;
      },
      "The CPU features the kernel dispatch checks, and the tables it picked (fp, quantized).");
  bind_model(m);
  bind_engine(m);
}
