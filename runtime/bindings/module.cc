// pybind11 module turbolm._turbomind: the only door between Python and the runtime.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/config.h"
#include "core/error.h"

namespace py = pybind11;

void bind_model(pybind11::module_&);   // bindings/model.cc
void bind_engine(pybind11::module_&);  // bindings/engine.cc

PYBIND11_MODULE(_turbomind, m) {
  m.doc() = "turbolm C++ runtime";
  py::register_exception<turbolm::Error>(m, "EngineError", PyExc_RuntimeError);
  m.def("read_config", [](const std::string& path) { return turbolm::load_config(path).to_map(); },
        py::arg("path"), "Parse a workspace config.ini with the runtime's loader; returns {key: text}.");
  bind_model(m);
  bind_engine(m);
}
