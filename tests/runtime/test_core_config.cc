// config.ini loader: values, defaults, and errors that name the file and key.
#include <cstdio>
#include <fstream>
#include <string>

#include "check.h"
#include "core/config.h"
#include "core/error.h"

static std::string write_tmp(const std::string& text) {
  static int n = 0;
  std::string path = "/tmp/turbolm_test_config_" + std::to_string(n++) + ".ini";
  std::ofstream(path) << text;
  return path;
}

static const char* kMinimal =
    "[llama]\nmodel_name = base\nhead_num = 4\nkv_head_num = 2\nvocab_size = 100\nnum_layer = 2\n"
    "inter_size = 32\nrotary_embedding = 16\nsize_per_head = 16\n";

TEST(defaults_fill_optional_keys) {
  auto c = turbolm::load_config(write_tmp(kMinimal));
  CHECK_EQ(c.head_num, 4);
  CHECK_EQ(c.kv_head_num, 2);
  CHECK_EQ(c.hidden_units, 64);  // head_num * size_per_head when absent
  CHECK_EQ(c.cache_block_seq_len, 128);
  CHECK(c.weight_type == turbolm::WeightType::kFP16);
}

TEST(inline_comments_and_floats) {
  auto c = turbolm::load_config(write_tmp(std::string(kMinimal) + "rope_theta = 100000.0 ; base\nnorm_eps = 1e-05\n"));
  CHECK_NEAR(c.rope_theta, 100000.0, 1e-3);
  CHECK_NEAR(c.norm_eps, 1e-5, 1e-12);
}

static std::string error_of(const std::string& text) {
  try {
    turbolm::load_config(write_tmp(text));
  } catch (const turbolm::Error& e) {
    return e.what();
  }
  return "";
}

TEST(errors_name_the_key) {
  CHECK(error_of("[llama]\nmodel_name = x\n").find("missing required key 'head_num'") != std::string::npos);
  CHECK(error_of(std::string(kMinimal) + "session_len = abc\n").find("'session_len' = 'abc'") != std::string::npos);
  CHECK(error_of(std::string(kMinimal) + "weight_type = fp8\n").find("weight_type 'fp8'") != std::string::npos);
  CHECK(error_of(std::string(kMinimal) + "tensor_para_size = 4\n").find("not divisible") != std::string::npos);
  CHECK(error_of(std::string(kMinimal) + "this line has no equals\n").find("malformed line") != std::string::npos);
  CHECK(error_of("").find("no [llama] section") != std::string::npos);
  CHECK_THROWS(turbolm::load_config("/nonexistent/config.ini"));
}

int main() { return check::run_all(); }
