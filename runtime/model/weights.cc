#include "model/weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace turbolm {

template <typename T>
AlignedArray<T>::AlignedArray(size_t n) : n_(n) {
  // aligned_alloc wants a size that is a multiple of the alignment.
  const size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64));
  if (!p) fail("out of memory allocating ", bytes, " bytes of weights");
  p_.reset(p);
}
template <typename T>
void AlignedArray<T>::Free::operator()(T* p) const { std::free(p); }
template class AlignedArray<uint16_t>;
template class AlignedArray<float>;

namespace {

using kernels::PackedMatrix;
using kernels::WDType;

const char* kReconvert = "re-run `turbolm convert` to rewrite the workspace";

// A read-only mapping of one workspace file whose size has been checked. Unmapped on scope exit,
// i.e. right after its tensor has been repacked.
class MappedFile {
 public:
  MappedFile(const std::string& path, size_t expected_bytes, const std::string& shape) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) {
      if (errno == ENOENT) fail(path, ": missing (expected ", shape, "); the workspace is incomplete, ", kReconvert);
      fail(path, ": cannot open: ", std::strerror(errno));
    }
    struct stat st{};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      fail(path, ": cannot stat: ", std::strerror(errno));
    }
    size_ = (size_t)st.st_size;
    if (size_ != expected_bytes) {
      ::close(fd);
      fail(path, ": has ", size_, " bytes but ", shape, " needs ", expected_bytes,
           "; the file is truncated or belongs to another model, tp or weight_type; ", kReconvert);
    }
    addr_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);  // the mapping keeps the file alive
    if (addr_ == MAP_FAILED) fail(path, ": mmap failed: ", std::strerror(errno));
  }
  ~MappedFile() { ::munmap(addr_, size_); }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint16_t* u16() const { return static_cast<const uint16_t*>(addr_); }

 private:
  std::string path_;
  void* addr_ = nullptr;
  size_t size_ = 0;
};

bool file_exists(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

// A run of columns [begin, begin + count) of a source matrix.
struct Cols {
  int begin, count;
};

struct Loader {
  std::string dir;
  const ModelConfig& cfg;
  int tp;      // ranks we run
  int ws_tp;   // ranks on disk
  WDType dtype;
  const char* dtype_name;

  std::string path(const std::string& name) const { return dir + "/" + name; }
  // On disk, rank r of a tensor split for tp ranks is file `<prefix>.<r>.<ext>`; a tp=1 workspace
  // run at tp=N reads rank 0's file (the whole tensor) and slices it.
  std::string rank_name(const std::string& prefix, const std::string& ext, int r) const {
    return prefix + "." + std::to_string(ws_tp == tp ? r : 0) + "." + ext;
  }
  bool slicing() const { return ws_tp != tp; }

  std::string shape_text(int rows, int cols) const {
    return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "] " + dtype_name;
  }
  MappedFile map(const std::string& name, int rows, int cols) const {
    return MappedFile(path(name), (size_t)rows * cols * sizeof(uint16_t), shape_text(rows, cols));
  }

  float to_f32(uint16_t h) const {
    return dtype == WDType::kF16 ? kernels::f16_to_f32(h) : kernels::bf16_to_f32(h);
  }

  std::vector<float> load_vector(const std::string& name, int n) const {
    MappedFile f = map(name, 1, n);
    std::vector<float> v(n);
    for (int i = 0; i < n; ++i) v[i] = to_f32(f.u16()[i]);
    return v;
  }

  // Packs the column runs `cols` of rows [row0, row0 + K) of a [*, ld] source into one matrix.
  void pack(const uint16_t* src, int ld, int row0, int K, const std::vector<Cols>& cols, Linear& out) const {
    int N = 0;
    for (const Cols& c : cols) N += c.count;
    out.panels = AlignedArray<uint16_t>(kernels::packed_elems(K, N));
    const uint16_t* base = src + (size_t)row0 * ld;
    if (cols.size() == 1) {
      kernels::pack_matrix(base + cols[0].begin, K, N, ld, 1, out.panels.data());
    } else {  // gather the runs side by side first (load time only)
      std::vector<uint16_t> tmp((size_t)K * N);
      for (int k = 0; k < K; ++k) {
        uint16_t* d = tmp.data() + (size_t)k * N;
        for (const Cols& c : cols) {
          std::memcpy(d, base + (size_t)k * ld + c.begin, sizeof(uint16_t) * c.count);
          d += c.count;
        }
      }
      kernels::pack_matrix(tmp.data(), K, N, N, 1, out.panels.data());
    }
    out.w = PackedMatrix{dtype, K, N, (N + kernels::kPanel - 1) / kernels::kPanel, out.panels.data()};
  }

  std::vector<float> gather(const uint16_t* src, const std::vector<Cols>& cols) const {
    std::vector<float> v;
    for (const Cols& c : cols)
      for (int j = 0; j < c.count; ++j) v.push_back(to_f32(src[c.begin + j]));
    return v;
  }

  // A linear whose columns are split over ranks (w_qkv, w1, w3). `full_cols` lists, for the whole
  // tensor, the column runs that are split evenly (q | k | v, or one run); rank r takes its share
  // of each run. `bias` also loads `<prefix>.<r>.bias` sliced the same way.
  void load_col_split(const std::string& prefix, int K, const std::vector<int>& runs, int r, bool bias,
                      Linear& out) const {
    int full_n = 0;
    for (int n : runs) full_n += n;
    const int disk_n = slicing() ? full_n : full_n / tp;
    std::vector<Cols> cols;
    if (slicing()) {
      int at = 0;
      for (int n : runs) {
        cols.push_back({at + r * (n / tp), n / tp});
        at += n;
      }
    } else {
      cols.push_back({0, disk_n});
    }
    {
      MappedFile f = map(rank_name(prefix, "weight", r), K, disk_n);
      pack(f.u16(), disk_n, 0, K, cols, out);
    }
    if (bias) {
      MappedFile f = map(rank_name(prefix, "bias", r), 1, disk_n);
      out.bias = gather(f.u16(), cols);
    }
  }

  // A linear whose rows are split over ranks (wo, w2): rank r takes rows [r·K, (r+1)·K).
  void load_row_split(const std::string& prefix, int K, int N, int r, Linear& out) const {
    const int disk_k = slicing() ? K * tp : K;
    MappedFile f = map(rank_name(prefix, "weight", r), disk_k, N);
    pack(f.u16(), N, slicing() ? r * K : 0, K, {{0, N}}, out);
  }
};

}  // namespace

LlamaWeights load_weights(const std::string& weights_dir, const ModelConfig& cfg, int tp) {
  if (cfg.weight_type == WeightType::kINT4 || cfg.weight_type == WeightType::kINT8)
    fail(weights_dir, "/config.ini: weight_type ", to_string(cfg.weight_type),
         " not supported yet by the CPU runtime; convert with weight_type fp16 or bf16");
  const int ws_tp = cfg.tensor_para_size;
  if (tp != ws_tp && ws_tp != 1)
    fail(weights_dir, ": the workspace is split for tensor_para_size=", ws_tp, " and cannot run at tp=", tp,
         "; run it with tp=", ws_tp, " or convert a tp=1 workspace (it can be sliced to any tp at load)");
  const int H = cfg.head_num, KV = cfg.kv_head_num, D = cfg.size_per_head, I = cfg.inter_size;
  const int hidden = cfg.hidden_units;
  if (KV % tp) fail(weights_dir, ": kv_head_num ", KV, " is not divisible by tp=", tp, "; choose a tp that divides it");
  if (H % tp) fail(weights_dir, ": head_num ", H, " is not divisible by tp=", tp);
  if (I % tp) fail(weights_dir, ": inter_size ", I, " is not divisible by tp=", tp);

  Loader L{weights_dir, cfg, tp, ws_tp,
           cfg.weight_type == WeightType::kBF16 ? WDType::kBF16 : WDType::kF16,
           cfg.weight_type == WeightType::kBF16 ? "bf16" : "fp16"};

  LlamaWeights W;
  SharedWeights& S = W.shared;
  S.dtype = L.dtype;
  {
    MappedFile f = L.map("tok_embeddings.weight", cfg.vocab_size, hidden);
    S.tok_embeddings = AlignedArray<uint16_t>((size_t)cfg.vocab_size * hidden);
    std::memcpy(S.tok_embeddings.data(), f.u16(), sizeof(uint16_t) * cfg.vocab_size * hidden);
  }
  S.norm = L.load_vector("norm.weight", hidden);
  {
    // output.weight is [vocab, hidden]: as W[K = hidden, N = vocab] it is the transposed view.
    MappedFile f = L.map("output.weight", cfg.vocab_size, hidden);
    S.output.panels = AlignedArray<uint16_t>(kernels::packed_elems(hidden, cfg.vocab_size));
    kernels::pack_matrix(f.u16(), hidden, cfg.vocab_size, 1, hidden, S.output.panels.data());
    S.output.w = kernels::PackedMatrix{L.dtype, hidden, cfg.vocab_size,
                                       (cfg.vocab_size + kernels::kPanel - 1) / kernels::kPanel,
                                       S.output.panels.data()};
  }

  const bool bias = cfg.attn_bias != 0;
  W.ranks.resize(tp);
  for (int r = 0; r < tp; ++r) {
    RankWeights& R = W.ranks[r];
    R.layers.resize(cfg.num_layer);
    for (int i = 0; i < cfg.num_layer; ++i) {
      LayerWeights& lw = R.layers[i];
      const std::string p = "layers." + std::to_string(i) + ".";
      lw.attn_norm = L.load_vector(p + "attention_norm.weight", hidden);
      lw.ffn_norm = L.load_vector(p + "ffn_norm.weight", hidden);
      L.load_col_split(p + "attention.w_qkv", hidden, {H * D, KV * D, KV * D}, r, bias, lw.w_qkv);
      L.load_row_split(p + "attention.wo", H * D / tp, hidden, r, lw.wo);
      if (bias) {
        // Optional even with attn_bias (Qwen-style models have q/k/v bias only); whole on every rank.
        const std::string b = L.rank_name(p + "attention.wo", "bias", r);
        if (file_exists(L.path(b))) lw.wo.bias = L.load_vector(b, hidden);
      }
      L.load_col_split(p + "feed_forward.w1", hidden, {I}, r, false, lw.w1);
      L.load_col_split(p + "feed_forward.w3", hidden, {I}, r, false, lw.w3);
      L.load_row_split(p + "feed_forward.w2", I / tp, hidden, r, lw.w2);
    }
  }
  return W;
}

}  // namespace turbolm
