#include "model/weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace turbolm {

template <typename T>
AlignedArray<T>::AlignedArray(size_t n, bool huge_pages) : n_(n) {
  const size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
  const bool huge = huge_pages && bytes >= kHugePageBytes;
  void* p = nullptr;
  if (::posix_memalign(&p, huge ? kHugePageBytes : 64, bytes ? bytes : 64) != 0 || !p)
    fail("out of memory allocating ", bytes, " bytes of weights");
#ifdef MADV_HUGEPAGE
  // Advice only: where transparent huge pages are off (or not "madvise"), this fails harmlessly.
  if (huge) ::madvise(p, ((bytes + 4095) / 4096) * 4096, MADV_HUGEPAGE);
#endif
  p_.reset(static_cast<T*>(p));
}
template <typename T>
void AlignedArray<T>::Free::operator()(T* p) const { std::free(p); }
template class AlignedArray<uint16_t>;
template class AlignedArray<float>;
template class AlignedArray<uint8_t>;
template class AlignedArray<int8_t>;

int lm_head_group_size(int hidden) {
  for (int g : {64, 32})
    if (hidden % g == 0) return g;
  for (int g = kernels::kQGroupAlign; g <= hidden; g += kernels::kQGroupAlign)
    if (hidden % g == 0) return g;
  return 0;
}

void SharedWeights::embedding_row(int token, int hidden, float* out) const {
  const int ng = hidden / emb_G;
  const float* s = emb_s.data() + (size_t)token * ng;
  const float* z = emb_z.data() + (size_t)token * ng;
  const uint8_t* q = emb_q.data() + (size_t)token * hidden * emb_bits / 8;
  for (int g = 0; g < ng; ++g)  // G is even (a multiple of 16): an int4 group starts on a byte
    for (int j = g * emb_G; j < (g + 1) * emb_G; ++j) {
      const int code = emb_bits == 8 ? q[j] : (q[j >> 1] >> ((j & 1) * 4)) & 0xf;
      out[j] = ((float)code - z[g]) * s[g];
    }
}

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
  const uint8_t* u8() const { return static_cast<const uint8_t*>(addr_); }
  const float* f32() const { return static_cast<const float*>(addr_); }

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
  int bits = 0;  // 4 / 8 for int4 / int8 workspaces (linears only), 0 otherwise
  int G = 0;     // group_size of quantized linears

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

  // An RMSNorm weight as the runtime multiplies by: norm_offset + w, in fp32 (Gemma stores w
  // and multiplies by 1 + w).
  std::vector<float> load_norm(const std::string& name, int n) const {
    std::vector<float> v = load_vector(name, n);
    if (cfg.norm_offset != 0.f)
      for (float& x : v) x += cfg.norm_offset;
    return v;
  }

  // Packs the column runs `cols` of rows [row0, row0 + K) of a [*, ld] source into one matrix.
  void pack(const uint16_t* src, int ld, int row0, int K, const std::vector<Cols>& cols, Linear& out) const {
    int N = 0;
    for (const Cols& c : cols) N += c.count;
    out.panels = AlignedArray<uint16_t>(kernels::packed_elems(K, N), true);
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

  // ---- quantized linears (weight_type int4 / int8; layout in workspace_template/README.md) ------
  // Per linear and rank, three files: `.qweight` uint8 [in, ceil(out / 2)] (int4: column 2j in the
  // low nibble, 2j + 1 in the high nibble of byte j) or uint8 [in, out] (int8); `.scales` fp16
  // [in / G, out]; `.zeros` fp16 [in / G, out] (zero points in q units). W = (q - zero) * scale.
  // Rows [row0, row0 + K) and the column runs `cols` of the [disk_k, disk_n] tensor are unpacked
  // and repacked into the runtime layout of kernels/qgemm.h.
  void load_q(const std::string& prefix, int r, int disk_k, int disk_n, int row0, int K,
              const std::vector<Cols>& cols, Linear& out) const {
    const size_t qrow = bits == 4 ? (size_t)(disk_n + 1) / 2 : (size_t)disk_n;
    const std::string qshape = "[" + std::to_string(disk_k) + ", " + std::to_string(qrow) + "] uint8 (" +
                               std::string(bits == 4 ? "int4" : "int8") + ")";
    MappedFile fq(path(rank_name(prefix, "qweight", r)), (size_t)disk_k * qrow, qshape);
    const std::string sshape = "[" + std::to_string(disk_k / G) + ", " + std::to_string(disk_n) +
                               "] fp16 (group_size " + std::to_string(G) + ")";
    MappedFile fs(path(rank_name(prefix, "scales", r)), (size_t)(disk_k / G) * disk_n * 2, sshape);
    MappedFile fz(path(rank_name(prefix, "zeros", r)), (size_t)(disk_k / G) * disk_n * 2, sshape);
    int N = 0;
    for (const Cols& c : cols) N += c.count;
    const int ng = K / G, g0 = row0 / G;
    std::vector<uint8_t> q((size_t)K * N);
    std::vector<float> s((size_t)ng * N), z((size_t)ng * N);
    for (int k = 0; k < K; ++k) {
      const uint8_t* row = fq.u8() + (size_t)(row0 + k) * qrow;
      uint8_t* d = q.data() + (size_t)k * N;
      for (const Cols& c : cols)
        for (int n = c.begin; n < c.begin + c.count; ++n)
          *d++ = bits == 4 ? (uint8_t)((row[n >> 1] >> ((n & 1) * 4)) & 0xf) : row[n];
    }
    for (int g = 0; g < ng; ++g) {
      const uint16_t* sr = fs.u16() + (size_t)(g0 + g) * disk_n;
      const uint16_t* zr = fz.u16() + (size_t)(g0 + g) * disk_n;
      float* sd = s.data() + (size_t)g * N;
      float* zd = z.data() + (size_t)g * N;
      for (const Cols& c : cols)
        for (int n = c.begin; n < c.begin + c.count; ++n) {
          *sd++ = kernels::f16_to_f32(sr[n]);
          *zd++ = kernels::f16_to_f32(zr[n]);
        }
    }
    qpack(bits, K, N, G, q, s, z, out);
  }

  // Unpacked q [K, N], s / z [K / G, N] -> the runtime layout of kernels/qgemm.h, in `out`.
  static void qpack(int bits, int K, int N, int G, const std::vector<uint8_t>& q, const std::vector<float>& s,
                    const std::vector<float>& z, Linear& out) {
    out.qdata = AlignedArray<uint8_t>(kernels::qpacked_q_bytes(bits, K, N), true);
    out.qsz = AlignedArray<float>(kernels::qpacked_sz_floats(K, N, G), true);
    kernels::qpack_matrix(bits, K, N, G, q.data(), N, s.data(), z.data(), N, out.qdata.data(), out.qsz.data());
    out.qw = kernels::QPackedMatrix{bits, K, N, kernels::qpanels(N), G, out.qdata.data(), out.qsz.data()};
  }

  // The lm head of an int4/int8 workspace: fp16 output.weight [vocab, hidden] quantized here to
  // int8 as W[K = hidden, N = vocab], round-to-nearest, asymmetric, per group of G rows of K, with
  // the arithmetic of converter/quant.py quantize_rtn (fp32, scale rounded to fp16, ties to even),
  // so quantize_lm_head there reproduces these integers exactly.
  void load_lm_head_int8(int vocab, int hidden, int G, Linear& out) const {
    MappedFile f = map("output.weight", vocab, hidden);
    const int K = hidden, ng = K / G;
    const float qmax = (float)((1 << kLMHeadBits) - 1);
    // rows [vocab, K] and [vocab, ng], as an int8 embedding_type stores them; packed by the same path
    std::vector<uint8_t> q((size_t)vocab * K);
    std::vector<float> s((size_t)vocab * ng), z((size_t)vocab * ng);
    std::vector<float> row(K);
    for (int n = 0; n < vocab; ++n) {
      const uint16_t* src = f.u16() + (size_t)n * K;
      for (int k = 0; k < K; ++k) row[k] = to_f32(src[k]);
      for (int g = 0; g < ng; ++g) {
        const float* w = row.data() + (size_t)g * G;
        const auto [mn, mx] = std::minmax_element(w, w + G);
        float scale = kernels::f16_to_f32(kernels::f32_to_f16(std::max(*mx - *mn, 1e-5f) / qmax));
        if (!(scale > 0.f)) scale = 0x1p-24f;  // fp16 underflow would divide by zero
        const float zero = std::clamp(std::nearbyint(-*mn / scale), 0.f, qmax);
        s[(size_t)n * ng + g] = scale;
        z[(size_t)n * ng + g] = zero;
        uint8_t* qr = q.data() + (size_t)n * K + (size_t)g * G;
        for (int j = 0; j < G; ++j) qr[j] = (uint8_t)std::clamp(std::nearbyint(w[j] / scale) + zero, 0.f, qmax);
      }
    }
    pack_head_from_rows(kLMHeadBits, vocab, K, G, q.data(), s.data(), z.data(), out);
  }

  // ---- the quantized embedding table / lm head (embedding_type int8 / int4) -------------------
  // `<prefix>.qweight` uint8 [rows, K] (int8) or [rows, K / 2] (int4: element 2j in the low nibble
  // of byte j); `.scales` / `.zeros` fp16 [rows, K / G]. Row n, element k: (q - zero) * scale.
  // Kept as stored (rows are looked up one token at a time); scales and zeros widened to fp32.
  void load_q_rows(const std::string& prefix, int rows, int K, int qbits, int G, AlignedArray<uint8_t>& q,
                   AlignedArray<float>& s, AlignedArray<float>& z) const {
    const size_t qrow = qbits == 4 ? (size_t)K / 2 : (size_t)K, ng = (size_t)K / G;
    MappedFile fq(path(prefix + ".qweight"), (size_t)rows * qrow,
                  "[" + std::to_string(rows) + ", " + std::to_string(qrow) + "] uint8 (embedding_type int" +
                      std::to_string(qbits) + ")");
    const std::string sshape = "[" + std::to_string(rows) + ", " + std::to_string(ng) +
                               "] fp16 (embedding_group_size " + std::to_string(G) + ")";
    MappedFile fs(path(prefix + ".scales"), (size_t)rows * ng * 2, sshape);
    MappedFile fz(path(prefix + ".zeros"), (size_t)rows * ng * 2, sshape);
    q = AlignedArray<uint8_t>((size_t)rows * qrow, true);
    std::memcpy(q.data(), fq.u8(), (size_t)rows * qrow);
    s = AlignedArray<float>((size_t)rows * ng);
    z = AlignedArray<float>((size_t)rows * ng);
    for (size_t i = 0; i < (size_t)rows * ng; ++i) {
      s.data()[i] = kernels::f16_to_f32(fs.u16()[i]);
      z.data()[i] = kernels::f16_to_f32(fz.u16()[i]);
    }
  }

  // The lm head W[K = hidden, N = vocab] from quantized rows [vocab, hidden] (load_q_rows' arrays):
  // the same integers, scales and zeros, transposed into the qgemm layout.
  static void pack_head_from_rows(int qbits, int N, int K, int G, const uint8_t* qr, const float* s,
                                  const float* z, Linear& out) {
    const size_t qrow = qbits == 4 ? (size_t)K / 2 : (size_t)K, ng = (size_t)K / G;
    std::vector<uint8_t> q((size_t)K * N);
    std::vector<float> ss(ng * N), zz(ng * N);
    for (int n = 0; n < N; ++n) {
      const uint8_t* row = qr + (size_t)n * qrow;
      for (int k = 0; k < K; ++k)
        q[(size_t)k * N + n] = qbits == 4 ? (uint8_t)((row[k >> 1] >> ((k & 1) * 4)) & 0xf) : row[k];
      for (size_t g = 0; g < ng; ++g) {
        ss[g * N + n] = s[(size_t)n * ng + g];
        zz[g * N + n] = z[(size_t)n * ng + g];
      }
    }
    qpack(qbits, K, N, G, q, ss, zz, out);
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
    if (bits) {
      load_q(prefix, r, K, disk_n, 0, K, cols, out);
    } else {
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
    if (bits) {
      load_q(prefix, r, disk_k, N, slicing() ? r * K : 0, K, {{0, N}}, out);
      return;
    }
    MappedFile f = map(rank_name(prefix, "weight", r), disk_k, N);
    pack(f.u16(), N, slicing() ? r * K : 0, K, {{0, N}}, out);
  }
};

// Groups of G rows must not straddle a rank's slice: every per-rank input size is a multiple of G.
void check_groups(const std::string& dir, const ModelConfig& cfg, int tp) {
  const int G = cfg.group_size;
  if (G <= 0 || G % kernels::kQGroupAlign)
    fail(dir, "/config.ini: group_size ", G, " must be a positive multiple of ", kernels::kQGroupAlign,
         " for weight_type ", to_string(cfg.weight_type), "; ", kReconvert);
  const std::pair<const char*, int> ins[] = {
      {"hidden (input of w_qkv, w1, w3)", cfg.hidden_units},
      {"head_num*size_per_head/tp (input of wo per rank)", cfg.head_num * cfg.size_per_head / tp},
      {"inter_size/tp (input of w2 per rank)", cfg.inter_size / tp}};
  for (auto& [what, k] : ins)
    if (k % G)
      fail(dir, ": group_size ", G, " does not divide ", what, " = ", k, " at tp=", tp,
           "; quantization groups must not straddle a rank's slice: run with a tp for which it divides, "
           "or convert with a group size that divides ", k);
}

// quant_policy = 4: the int8 KV parameters of layer i on rank r (4 float32, DESIGN.md §3).
void load_kv_qparams(const Loader& L, const std::string& p, int r, LayerWeights& lw) {
  const std::string name = L.rank_name(p + "past_kv_scale", "weight", r);
  if (!file_exists(L.path(name)))
    fail(L.path(name), ": missing; quant_policy = 4 (int8 KV cache) needs the KV quantization parameters: run "
         "`turbolm lite calibrate` and then `turbolm lite kv_qparams --turbomind_dir ", L.dir,
         "`, or set quant_policy = 0 in config.ini");
  MappedFile f(L.path(name), 4 * sizeof(float), "4 float32 [k_scale, k_zp, v_scale, v_zp]");
  for (int j = 0; j < 4; ++j) {
    const float v = f.f32()[j];
    if (!std::isfinite(v) || ((j == 0 || j == 2) && !(v > 0.f)))
      fail(L.path(name), ": value ", j, " = ", v, " is not a valid ", (j % 2 ? "zero point" : "positive scale"),
           "; re-run `turbolm lite kv_qparams`");
    lw.kv_qparams[j] = v;
  }
}

}  // namespace

LlamaWeights load_weights(const std::string& weights_dir, const ModelConfig& cfg, int tp) {
  const bool quantized = cfg.weight_type == WeightType::kINT4 || cfg.weight_type == WeightType::kINT8;
  if (cfg.format_version > kFormatVersion)
    fail(weights_dir, "/config.ini: format_version ", cfg.format_version, " is newer than this runtime reads (",
         kFormatVersion, "); upgrade turbolm or re-convert with this version");
  if (quantized && cfg.format_version < kQuantFormatVersion)
    fail(weights_dir, "/config.ini: weight_type ", to_string(cfg.weight_type), " with format_version ",
         cfg.format_version, ": this runtime reads int4/int8 workspaces of format_version ", kQuantFormatVersion,
         " (the layout in workspace_template/README.md); ", kReconvert);
  const int ws_tp = cfg.tensor_para_size;
  if (tp != ws_tp && ws_tp != 1)
    fail(weights_dir, ": the workspace is split for tensor_para_size=", ws_tp, " and cannot run at tp=", tp,
         "; run it with tp=", ws_tp, " or convert a tp=1 workspace (it can be sliced to any tp at load)");
  const int H = cfg.head_num, KV = cfg.kv_head_num, D = cfg.size_per_head, I = cfg.inter_size;
  const int hidden = cfg.hidden_units;
  if (KV % tp) fail(weights_dir, ": kv_head_num ", KV, " is not divisible by tp=", tp, "; choose a tp that divides it");
  if (H % tp) fail(weights_dir, ": head_num ", H, " is not divisible by tp=", tp);
  if (I % tp) fail(weights_dir, ": inter_size ", I, " is not divisible by tp=", tp);
  if (quantized) check_groups(weights_dir, cfg, tp);

  Loader L{weights_dir, cfg, tp, ws_tp,
           cfg.weight_type == WeightType::kBF16 ? WDType::kBF16 : WDType::kF16,
           cfg.weight_type == WeightType::kBF16 ? "bf16" : "fp16"};
  if (quantized) {
    L.bits = cfg.weight_type == WeightType::kINT4 ? 4 : 8;
    L.G = cfg.group_size;
  }

  LlamaWeights W;
  SharedWeights& S = W.shared;
  S.dtype = L.dtype;
  S.emb_bits = cfg.embedding_bits();
  if (S.emb_bits) {
    if (cfg.format_version < kQuantEmbeddingFormatVersion)
      fail(weights_dir, "/config.ini: embedding_type ", cfg.embedding_type, " needs format_version ",
           kQuantEmbeddingFormatVersion, ", not ", cfg.format_version, "; ", kReconvert);
    S.emb_G = cfg.embedding_group_size;
    L.load_q_rows("tok_embeddings", cfg.vocab_size, hidden, S.emb_bits, S.emb_G, S.emb_q, S.emb_s, S.emb_z);
  } else {
    MappedFile f = L.map("tok_embeddings.weight", cfg.vocab_size, hidden);
    S.tok_embeddings = AlignedArray<uint16_t>((size_t)cfg.vocab_size * hidden);
    std::memcpy(S.tok_embeddings.data(), f.u16(), sizeof(uint16_t) * cfg.vocab_size * hidden);
  }
  S.norm = L.load_norm("norm.weight", hidden);
  if (S.emb_bits && cfg.tie_word_embeddings) {
    Loader::pack_head_from_rows(S.emb_bits, cfg.vocab_size, hidden, S.emb_G, S.emb_q.data(), S.emb_s.data(),
                                S.emb_z.data(), S.output);
  } else if (S.emb_bits) {
    AlignedArray<uint8_t> q;
    AlignedArray<float> hs, hz;
    L.load_q_rows("output", cfg.vocab_size, hidden, S.emb_bits, S.emb_G, q, hs, hz);
    Loader::pack_head_from_rows(S.emb_bits, cfg.vocab_size, hidden, S.emb_G, q.data(), hs.data(), hz.data(),
                                S.output);
  } else if (quantized && lm_head_group_size(hidden) > 0) {
    // The runtime keeps the lm head in int8 for quantized workspaces (weights.h kLMHeadBits).
    L.load_lm_head_int8(cfg.vocab_size, hidden, lm_head_group_size(hidden), S.output);
  } else {
    // output.weight is [vocab, hidden]: as W[K = hidden, N = vocab] it is the transposed view.
    MappedFile f = L.map("output.weight", cfg.vocab_size, hidden);
    S.output.panels = AlignedArray<uint16_t>(kernels::packed_elems(hidden, cfg.vocab_size), true);
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
      if (cfg.quant_policy == kQuantPolicyKVInt8) load_kv_qparams(L, p, r, lw);
      lw.attn_norm = L.load_norm(p + "attention_norm.weight", hidden);
      lw.ffn_norm = L.load_norm(p + "ffn_norm.weight", hidden);
      if (cfg.qk_norm) {
        lw.q_norm = L.load_norm(p + "attention.q_norm.weight", D);
        lw.k_norm = L.load_norm(p + "attention.k_norm.weight", D);
      }
      if (cfg.post_norm) {
        lw.post_attn_norm = L.load_norm(p + "post_attention_norm.weight", hidden);
        lw.post_ffn_norm = L.load_norm(p + "post_ffn_norm.weight", hidden);
      }
      // Each linear at its own width (int8_linears: a mixed-precision int4 workspace).
      auto bits = [&](const char* name) { return quantized ? cfg.linear_bits(i, name) : 0; };
      L.bits = bits("w_qkv");
      L.load_col_split(p + "attention.w_qkv", hidden, {H * D, KV * D, KV * D}, r, bias, lw.w_qkv);
      L.bits = bits("wo");
      L.load_row_split(p + "attention.wo", H * D / tp, hidden, r, lw.wo);
      if (bias) {
        // Optional even with attn_bias (Qwen-style models have q/k/v bias only); whole on every rank.
        const std::string b = L.rank_name(p + "attention.wo", "bias", r);
        if (file_exists(L.path(b))) lw.wo.bias = L.load_vector(b, hidden);
      }
      L.bits = bits("w1");
      L.load_col_split(p + "feed_forward.w1", hidden, {I}, r, false, lw.w1);
      L.bits = bits("w3");
      L.load_col_split(p + "feed_forward.w3", hidden, {I}, r, false, lw.w3);
      L.bits = bits("w2");
      L.load_row_split(p + "feed_forward.w2", I / tp, hidden, r, lw.w2);
    }
  }
  return W;
}

}  // namespace turbolm
