// Minimal test harness for the C++ unit tests: no external framework, so tests always build.
// Usage: TEST(name) { CHECK(cond); CHECK_NEAR(a, b, tol); }  int main() { return run_all(); }
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace check {
struct Case { const char* name; std::function<void()> fn; };
inline std::vector<Case>& registry() { static std::vector<Case> r; return r; }
inline int& failures() { static int f = 0; return f; }
struct Register { Register(const char* n, std::function<void()> f) { registry().push_back({n, std::move(f)}); } };
inline int run_all() {
  int failed_cases = 0;
  for (auto& c : registry()) {
    int before = failures();
    try { c.fn(); } catch (const std::exception& e) { std::printf("  exception: %s\n", e.what()); ++failures(); }
    bool ok = failures() == before;
    failed_cases += !ok;
    std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", c.name);
  }
  std::printf("%d passed, %d failed\n", (int)registry().size() - failed_cases, failed_cases);
  return failed_cases ? 1 : 0;
}
}  // namespace check

#define TEST(name) static void name(); static check::Register reg_##name(#name, name); static void name()
#define CHECK(cond) do { if (!(cond)) { std::printf("  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); ++check::failures(); } } while (0)
#define CHECK_EQ(a, b) do { auto _a = (a); auto _b = (b); if (!(_a == _b)) { std::printf("  %s:%d: CHECK_EQ(%s, %s) failed: %s vs %s\n", __FILE__, __LINE__, #a, #b, std::to_string(_a).c_str(), std::to_string(_b).c_str()); ++check::failures(); } } while (0)
#define CHECK_NEAR(a, b, tol) do { double _a = (a), _b = (b); if (!(std::fabs(_a - _b) <= (tol))) { std::printf("  %s:%d: CHECK_NEAR(%s, %s) failed: %g vs %g (tol %g)\n", __FILE__, __LINE__, #a, #b, _a, _b, (double)(tol)); ++check::failures(); } } while (0)
#define CHECK_THROWS(expr) do { bool _t = false; try { expr; } catch (...) { _t = true; } if (!_t) { std::printf("  %s:%d: expected %s to throw\n", __FILE__, __LINE__, #expr); ++check::failures(); } } while (0)
