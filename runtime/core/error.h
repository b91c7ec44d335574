// The runtime's one exception type. Every error a user can cause (bad workspace, bad request)
// is thrown as turbolm::Error with a message that names the file, key or value and says what to
// do; pybind11 turns it into a Python RuntimeError. Nothing in the runtime calls exit/abort.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace turbolm {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] inline void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Error(os.str());
}

#define TURBOLM_CHECK(cond, ...) do { if (!(cond)) ::turbolm::fail(__VA_ARGS__); } while (0)

}  // namespace turbolm
