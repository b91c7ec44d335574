#include "core/config.h"

#include <set>

#include <cctype>
#include <cmath>
#include <fstream>
#include <functional>
#include <sstream>
#include <vector>

#include "core/error.h"

namespace turbolm {

const char* to_string(WeightType t) {
  switch (t) {
    case WeightType::kFP16: return "fp16";
    case WeightType::kBF16: return "bf16";
    case WeightType::kINT4: return "int4";
    case WeightType::kINT8: return "int8";
  }
  return "?";
}

namespace {

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace((unsigned char)s[b])) ++b;
  while (e > b && std::isspace((unsigned char)s[e - 1])) --e;
  return s.substr(b, e - b);
}

int parse_int(const std::string& path, const std::string& key, const std::string& v) {
  if (v == "true" || v == "True") return 1;
  if (v == "false" || v == "False") return 0;
  char* end = nullptr;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || std::floor(d) != d)
    fail(path, ": key '", key, "' = '", v, "' is not a valid int");
  return (int)d;
}

float parse_float(const std::string& path, const std::string& key, const std::string& v) {
  char* end = nullptr;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0') fail(path, ": key '", key, "' = '", v, "' is not a valid float");
  return (float)d;
}

// One row per key: name, required?, and how to set / print it. The order is the schema's.
struct Field {
  const char* name;
  bool required;
  std::function<void(ModelConfig&, const std::string& path, const std::string& v)> set;
  std::function<std::string(const ModelConfig&)> get;
};

std::string fmt_float(float f) {
  std::ostringstream os;
  os.precision(9);
  os << f;
  return os.str();
}

// A comma-separated list of floats ("" = empty).
std::vector<float> parse_floats(const std::string& path, const std::string& key, const std::string& v) {
  std::vector<float> out;
  size_t b = 0;
  while (b < v.size()) {
    size_t e = v.find(',', b);
    if (e == std::string::npos) e = v.size();
    out.push_back(parse_float(path, key, trim(v.substr(b, e - b))));
    b = e + 1;
  }
  return out;
}

std::string fmt_floats(const std::vector<float>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + fmt_float(v[i]);
  return s;
}

#define INT_FIELD(n, req) \
  Field{#n, req, [](ModelConfig& c, const std::string& p, const std::string& v) { c.n = parse_int(p, #n, v); }, \
        [](const ModelConfig& c) { return std::to_string(c.n); }}
#define FLOAT_FIELD(n, req) \
  Field{#n, req, [](ModelConfig& c, const std::string& p, const std::string& v) { c.n = parse_float(p, #n, v); }, \
        [](const ModelConfig& c) { return fmt_float(c.n); }}

const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      Field{"model_name", true, [](ModelConfig& c, const std::string&, const std::string& v) { c.model_name = v; },
            [](const ModelConfig& c) { return c.model_name; }},
      INT_FIELD(tensor_para_size, false),
      INT_FIELD(head_num, true),
      INT_FIELD(kv_head_num, true),
      INT_FIELD(vocab_size, true),
      INT_FIELD(num_layer, true),
      INT_FIELD(inter_size, true),
      FLOAT_FIELD(norm_eps, false),
      INT_FIELD(attn_bias, false),
      INT_FIELD(start_id, false),
      INT_FIELD(end_id, false),
      INT_FIELD(session_len, false),
      Field{"weight_type", false,
            [](ModelConfig& c, const std::string& p, const std::string& v) {
              if (v == "fp16") c.weight_type = WeightType::kFP16;
              else if (v == "bf16") c.weight_type = WeightType::kBF16;
              else if (v == "int4") c.weight_type = WeightType::kINT4;
              else if (v == "int8") c.weight_type = WeightType::kINT8;
              else fail(p, ": weight_type '", v, "' is not one of fp16, bf16, int4, int8");
            },
            [](const ModelConfig& c) { return std::string(to_string(c.weight_type)); }},
      INT_FIELD(rotary_embedding, true),
      FLOAT_FIELD(rope_theta, false),
      INT_FIELD(size_per_head, true),
      INT_FIELD(group_size, false),
      INT_FIELD(max_batch_size, false),
      INT_FIELD(max_context_token_num, false),
      INT_FIELD(step_length, false),
      FLOAT_FIELD(cache_max_entry_count, false),
      INT_FIELD(cache_block_seq_len, false),
      INT_FIELD(cache_chunk_size, false),
      INT_FIELD(use_context_fmha, false),
      INT_FIELD(quant_policy, false),
      INT_FIELD(max_position_embeddings, false),
      FLOAT_FIELD(rope_scaling_factor, false),
      INT_FIELD(use_logn_attn, false),
      INT_FIELD(hidden_units, false),
      INT_FIELD(format_version, false),
      INT_FIELD(enable_prefix_caching, false),
      Field{"rope_type", false,
            [](ModelConfig& c, const std::string& p, const std::string& v) {
              if (v != "" && v != "default" && v != "dynamic" && v != "linear" && v != "llama3" && v != "yarn" &&
                  v != "longrope")
                fail(p, ": rope_type '", v, "' is not one of default, dynamic, linear, llama3, yarn, longrope");
              c.rope_type = v;
            },
            [](const ModelConfig& c) { return c.rope_type; }},
      FLOAT_FIELD(rope_low_freq_factor, false),
      FLOAT_FIELD(rope_high_freq_factor, false),
      INT_FIELD(rope_original_max_position_embeddings, false),
      INT_FIELD(qk_norm, false),
      Field{"act_type", false,
            [](ModelConfig& c, const std::string& p, const std::string& v) {
              if (v != "float" && v != "int8" && v != "bf16")
                fail(p, ": act_type '", v, "' is not one of float, int8, bf16");
              c.act_type = v;
            },
            [](const ModelConfig& c) { return c.act_type; }},
      Field{"hidden_act", false,
            [](ModelConfig& c, const std::string& p, const std::string& v) {
              if (v != "silu" && v != "gelu_tanh") fail(p, ": hidden_act '", v, "' is not one of silu, gelu_tanh");
              c.hidden_act = v;
            },
            [](const ModelConfig& c) { return c.hidden_act; }},
      FLOAT_FIELD(norm_offset, false),
      FLOAT_FIELD(embedding_scale, false),
      INT_FIELD(post_norm, false),
      FLOAT_FIELD(attn_scale, false),
      FLOAT_FIELD(attn_softcap, false),
      FLOAT_FIELD(final_softcap, false),
      INT_FIELD(sliding_window, false),
      Field{"sliding_layers", false,
            [](ModelConfig& c, const std::string& p, const std::string& v) {
              if (v.find_first_not_of("01") != std::string::npos)
                fail(p, ": sliding_layers '", v, "' must be one 0 or 1 per layer");
              c.sliding_layers = v;
            },
            [](const ModelConfig& c) { return c.sliding_layers; }},
      FLOAT_FIELD(rope_local_theta, false),
      Field{"rope_freq_factors", false,
            [](ModelConfig& c, const std::string& p, const std::string& v) {
              c.rope_freq_factors = parse_floats(p, "rope_freq_factors", v);
            },
            [](const ModelConfig& c) { return fmt_floats(c.rope_freq_factors); }},
      Field{"rope_long_freq_factors", false,
            [](ModelConfig& c, const std::string& p, const std::string& v) {
              c.rope_long_freq_factors = parse_floats(p, "rope_long_freq_factors", v);
            },
            [](const ModelConfig& c) { return fmt_floats(c.rope_long_freq_factors); }},
      FLOAT_FIELD(rope_attention_factor, false),
      Field{"int8_linears", false,
            [](ModelConfig& c, const std::string&, const std::string& v) { c.int8_linears = v; },
            [](const ModelConfig& c) { return c.int8_linears; }},
      Field{"embedding_type", false,
            [](ModelConfig& c, const std::string& p, const std::string& v) {
              if (v != "float" && v != "int8" && v != "int4")
                fail(p, ": embedding_type '", v, "' is not one of float, int8, int4");
              c.embedding_type = v;
            },
            [](const ModelConfig& c) { return c.embedding_type; }},
      INT_FIELD(embedding_group_size, false),
      INT_FIELD(tie_word_embeddings, false),
  };
  return f;
}

// int8_linears as a set of "i.name" entries, each checked.
std::set<std::string> int8_linear_set(const ModelConfig& c, const std::string& path) {
  std::set<std::string> out;
  size_t b = 0;
  const std::string& v = c.int8_linears;
  while (b < v.size()) {
    size_t e = v.find(',', b);
    if (e == std::string::npos) e = v.size();
    const std::string item = trim(v.substr(b, e - b));
    const size_t dot = item.find('.');
    const std::string name = dot == std::string::npos ? "" : item.substr(dot + 1);
    int layer = -1;
    try {
      size_t used = 0;
      layer = std::stoi(item.substr(0, dot), &used);
      if (used != dot) layer = -1;
    } catch (...) {
      layer = -1;
    }
    if (layer < 0 || layer >= c.num_layer ||
        (name != "w_qkv" && name != "wo" && name != "w1" && name != "w3" && name != "w2"))
      fail(path, ": int8_linears entry '", item, "' is not LAYER.NAME with LAYER < num_layer and NAME one of "
           "w_qkv, wo, w1, w3, w2");
    out.insert(std::to_string(layer) + "." + name);
    b = e + 1;
  }
  return out;
}

}  // namespace

int ModelConfig::linear_bits(int l, const std::string& name) const {
  const int base = weight_type == WeightType::kINT4 ? 4 : weight_type == WeightType::kINT8 ? 8 : 0;
  if (base != 4 || int8_linears.empty()) return base;
  return int8_linear_set(*this, "config.ini").count(std::to_string(l) + "." + name) ? 8 : 4;
}

std::map<std::string, std::string> ModelConfig::to_map() const {
  std::map<std::string, std::string> m;
  for (const auto& f : fields()) m[f.name] = f.get(*this);
  return m;
}

ModelConfig load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, ": not found; is this a workspace made by `turbolm convert`?");
  std::map<std::string, std::string> kv;
  std::string line, section;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    // Inline comments as Python's configparser(inline_comment_prefixes=(';', '#')) reads them.
    for (size_t i = 0; i < line.size(); ++i)
      if ((line[i] == ';' || line[i] == '#') && (i == 0 || std::isspace((unsigned char)line[i - 1]))) {
        line = line.substr(0, i);
        break;
      }
    line = trim(line);
    if (line.empty()) continue;
    if (line.front() == '[') {
      if (line.back() != ']') fail(path, ":", lineno, ": malformed section header '", line, "'");
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    size_t eq = line.find_first_of("=:");
    if (eq == std::string::npos) fail(path, ":", lineno, ": malformed line '", line, "' (expected key = value)");
    if (section == "llama") kv[trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  if (section.empty() && kv.empty()) fail(path, ": no [llama] section");

  ModelConfig c;
  for (const auto& f : fields()) {
    auto it = kv.find(f.name);
    if (it == kv.end()) {
      if (f.required) fail(path, ": missing required key '", f.name, "' in [llama]; re-run `turbolm convert`");
      continue;
    }
    f.set(c, path, it->second);
  }
  const std::pair<const char*, int> positive[] = {
      {"head_num", c.head_num}, {"kv_head_num", c.kv_head_num}, {"num_layer", c.num_layer},
      {"size_per_head", c.size_per_head}, {"vocab_size", c.vocab_size}, {"inter_size", c.inter_size},
      {"tensor_para_size", c.tensor_para_size}, {"session_len", c.session_len},
      {"cache_block_seq_len", c.cache_block_seq_len}};
  for (auto& [name, v] : positive)
    if (v <= 0) fail(path, ": key '", name, "' must be positive, got ", v);
  if (c.head_num % c.kv_head_num)
    fail(path, ": head_num ", c.head_num, " is not a multiple of kv_head_num ", c.kv_head_num);
  if (c.kv_head_num % c.tensor_para_size)
    fail(path, ": kv_head_num ", c.kv_head_num, " is not divisible by tensor_para_size ", c.tensor_para_size);
  if (c.hidden_units == 0) c.hidden_units = c.head_num * c.size_per_head;
  if (!c.sliding_layers.empty() && (int)c.sliding_layers.size() != c.num_layer)
    fail(path, ": sliding_layers has ", c.sliding_layers.size(), " entries for ", c.num_layer, " layers");
  if (!c.int8_linears.empty()) {
    if (c.weight_type != WeightType::kINT4)
      fail(path, ": int8_linears needs weight_type int4 (the other linears), not ", to_string(c.weight_type));
    int8_linear_set(c, path);  // every entry checked here, once
  }
  const int pairs = c.rotary_embedding / 2;
  for (const auto* f : {&c.rope_freq_factors, &c.rope_long_freq_factors})
    if (!f->empty() && (int)f->size() != pairs)
      fail(path, ": rope_freq_factors / rope_long_freq_factors have ", f->size(), " entries; rotary_embedding ",
           c.rotary_embedding, " needs ", pairs);
  if (c.rope_type == "longrope" && (c.rope_freq_factors.empty() || c.rope_long_freq_factors.empty()))
    fail(path, ": rope_type longrope needs rope_freq_factors (short) and rope_long_freq_factors");
  // yarn's blend of interpolated and extrapolated frequencies lives in rope_freq_factors (the
  // converter computes them): without them the runtime would run plain RoPE under a yarn label.
  if (c.rope_type == "yarn" && c.rope_freq_factors.empty())
    fail(path, ": rope_type yarn needs rope_freq_factors (written by `turbolm convert` from rope_scaling)");
  if (c.sliding_window < 0) fail(path, ": key 'sliding_window' must be >= 0, got ", c.sliding_window);
  if (c.attn_softcap < 0 || c.final_softcap < 0) fail(path, ": attn_softcap and final_softcap must be >= 0");
  if (c.embedding_bits()) {
    const int G = c.embedding_group_size;
    if (G <= 0 || G % 16 || c.hidden_units % G)
      fail(path, ": embedding_group_size ", G, " must be a positive multiple of 16 dividing hidden_units ",
           c.hidden_units, " for embedding_type ", c.embedding_type);
  }
  const bool int_weights = c.weight_type == WeightType::kINT4 || c.weight_type == WeightType::kINT8;
  if (c.act_type == "int8" && !int_weights)
    fail(path, ": act_type int8 needs weight_type int4 or int8, not ", to_string(c.weight_type));
  if (c.act_type == "bf16" && int_weights)
    fail(path, ": act_type bf16 needs weight_type fp16 or bf16, not ", to_string(c.weight_type));
  return c;
}

}  // namespace turbolm
