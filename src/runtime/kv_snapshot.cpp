// KV snapshots: Engine::save_kv / load_kv, the file layout of headinfer/kv_snapshot.h.
#include "headinfer/kv_snapshot.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "headinfer/engine.h"
#include "headinfer/error.h"

namespace headinfer {
namespace {

static_assert(std::endian::native == std::endian::little, "KV snapshots are written in the host's byte order");

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull, kP2 = 0xC2B2AE3D27D4EB4Full;

uint64_t mix(uint64_t h, uint64_t w) { return std::rotl(h ^ (w * kP2), 31) * kP1; }

std::string hex64(uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

// The index's integers. nlohmann's get<integer>() of a JSON float casts it (undefined behaviour
// past the integer's range: the fuzzer's 2.4e+49), so a float, or an integer outside T's range,
// is refused here with the file's name.
template <typename T>
T index_integer(const nlohmann::json& j, const std::string& where, const std::string& what) {
  if (j.is_number_unsigned()) {  // every non-negative integer the parser reads
    const auto v = j.get<uint64_t>();
    if (v <= static_cast<uint64_t>(std::numeric_limits<T>::max())) return static_cast<T>(v);
  } else if (j.is_number_integer() && std::is_signed_v<T>) {
    return static_cast<T>(j.get<int64_t>());
  }
  throw Error(where + "bad index: " + what + " is not an integer in range");
}

// A section's field: a key it lacks, or a section that is not an object, reads as 0 or "" (which
// the layout check and the checksum then refuse); a value of another type is refused.
uint64_t section_offset(const nlohmann::json& s, const char* key, const std::string& where) {
  if (!s.is_object() || !s.contains(key)) return 0;
  return index_integer<uint64_t>(s.at(key), where, std::string("section ") + key);
}
std::string section_text(const nlohmann::json& s, const char* key) {
  if (!s.is_object() || !s.contains(key) || !s.at(key).is_string()) return {};
  return s.at(key).get<std::string>();
}

// An open file descriptor, closed on every path.
class Fd {
 public:
  Fd(const std::string& path, int flags, const std::string& what) : path_(path) {
    fd_ = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(what + " " + path + ": " + std::strerror(errno));
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void write_at(const void* data, size_t bytes, uint64_t offset) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      const ssize_t n = ::pwrite(fd_, p, bytes, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw Error("KV snapshot " + path_ + ": write failed: " + std::strerror(errno) + " (disk full?)");
      p += n, bytes -= static_cast<size_t>(n), offset += static_cast<uint64_t>(n);
    }
  }
  void read_at(void* data, size_t bytes, uint64_t offset) {
    char* p = static_cast<char*>(data);
    while (bytes > 0) {
      const ssize_t n = ::pread(fd_, p, bytes, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw Error("KV snapshot " + path_ + ": read failed: " + std::strerror(errno));
      if (n == 0) throw Error("KV snapshot " + path_ + ": truncated (the file ends early)");
      p += n, bytes -= static_cast<size_t>(n), offset += static_cast<uint64_t>(n);
    }
  }
  void close_synced() {
    if (::fsync(fd_) != 0) throw Error("KV snapshot " + path_ + ": fsync failed: " + std::strerror(errno));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw Error("KV snapshot " + path_ + ": close failed: " + std::strerror(errno));
  }

 private:
  std::string path_;
  int fd_ = -1;
};

struct Header {
  uint32_t version = 0;
  uint64_t index_offset = 0, index_bytes = 0, index_checksum = 0;
};

std::vector<char> encode_header(const Header& h) {
  std::vector<char> out(kKvSnapshotHeaderBytes, 0);
  std::memcpy(out.data(), kKvSnapshotMagic, 8);
  std::memcpy(out.data() + 8, &kKvSnapshotVersion, 4);
  std::memcpy(out.data() + 16, &h.index_offset, 8);
  std::memcpy(out.data() + 24, &h.index_bytes, 8);
  std::memcpy(out.data() + 32, &h.index_checksum, 8);
  const uint64_t self = kv_checksum(out.data(), 40);
  std::memcpy(out.data() + 40, &self, 8);
  return out;
}

Header decode_header(const char* p, const std::string& path) {
  const std::string where = "KV snapshot " + path + ": ";
  if (std::memcmp(p, kKvSnapshotMagic, 8) != 0) throw Error(where + "not a headinfer KV snapshot (bad magic)");
  uint32_t version = 0;
  std::memcpy(&version, p + 8, 4);
  if (version < 1 || version > kKvSnapshotVersion)
    throw Error(where + "format version " + std::to_string(version) + ", this build reads versions 1 to " +
                std::to_string(kKvSnapshotVersion));
  uint64_t self = 0;
  std::memcpy(&self, p + 40, 8);
  if (self != kv_checksum(p, 40)) throw Error(where + "header checksum mismatch (the file is corrupt)");
  Header h;
  h.version = version;
  std::memcpy(&h.index_offset, p + 16, 8);
  std::memcpy(&h.index_bytes, p + 24, 8);
  std::memcpy(&h.index_checksum, p + 32, 8);
  return h;
}

nlohmann::json plan_json(const KvCache& kv) {
  const Plan* plan = kv_cache_plan(kv);
  if (plan == nullptr) return {{"offload", "none"}};
  return {{"context", plan->context},         {"group_size", plan->group_size},
          {"n_groups", plan->n_groups},       {"n_resident_groups", plan->n_resident_groups},
          {"n_streamed_groups", plan->n_streamed_groups}, {"n_cpu_groups", plan->n_cpu_groups},
          {"chunk", plan->chunk},             {"gpu_mem", plan->gpu_mem}};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Bytes of one head's K (or V) rows, `positions` of them.
size_t block_bytes(const ModelConfig& c, DType dtype, int64_t positions) {
  return static_cast<size_t>(positions) * static_cast<size_t>(c.head_dim) * dtype_size(dtype);
}

// Per layer, the first position a snapshot of `positions` holds: the first key a chunk there sees.
std::vector<int64_t> layer_first(const ModelConfig& c, int64_t positions) {
  std::vector<int64_t> first(static_cast<size_t>(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l) first[static_cast<size_t>(l)] = c.first_visible_key(l, positions);
  return first;
}

}  // namespace

uint64_t kv_checksum(const void* data, size_t bytes, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {seed + kP1 + kP2, seed + kP2, seed, seed - kP1};
  size_t i = 0;
  for (; i + 32 <= bytes; i += 32)
    for (int j = 0; j < 4; ++j) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * j, 8);
      lane[j] = mix(lane[j], w);
    }
  uint64_t h = std::rotl(lane[0], 1) + std::rotl(lane[1], 7) + std::rotl(lane[2], 12) + std::rotl(lane[3], 18);
  for (; i < bytes; ++i) h = mix(h, p[i]);
  h ^= bytes;
  h ^= h >> 33, h *= kP2, h ^= h >> 29, h *= kP1, h ^= h >> 32;
  return h;
}

std::string model_identity(const Checkpoint& checkpoint, Device* device) {
  const ModelConfig& c = checkpoint.config();
  std::string desc = c.model_type;
  for (int64_t v : {c.hidden_size, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.intermediate_size,
                    c.vocab_size, static_cast<int64_t>(c.rope.type), static_cast<int64_t>(c.qkv_bias),
                    static_cast<int64_t>(c.o_bias), static_cast<int64_t>(c.mlp_bias), static_cast<int64_t>(c.qk_norm),
                    static_cast<int64_t>(c.tie_word_embeddings)})
    desc.append(",").append(std::to_string(v));
  for (double v : {c.rms_norm_eps, c.rope.theta, c.rope.factor, c.rope.low_freq_factor, c.rope.high_freq_factor,
                   c.rope.attention_factor, c.rope.beta_fast, c.rope.beta_slow})
    desc.append(",").append(hex64(std::bit_cast<uint64_t>(v)));
  for (int64_t w : c.layer_window) desc.append(",").append(std::to_string(w));
  uint64_t h = kv_checksum(desc.data(), desc.size());
  constexpr size_t kSample = 4096;
  std::vector<char> sample(2 * kSample);
  for (const TensorView* t : checkpoint.tensors()) {
    std::string td = t->name + ":" + std::string(dtype_name(t->dtype)) + t->shape_string();
    h = kv_checksum(td.data(), td.size(), h);
    const size_t n = std::min(kSample, t->nbytes);
    const char* head = static_cast<const char*>(t->data);
    const char* tail = head + (t->nbytes - n);
    if (t->on_device) {
      // A tensor used in place on the device (a torch model's CUDA weights): its bytes are read
      // through the device, never dereferenced on the host.
      if (device == nullptr) throw Error("model identity: tensor '" + t->name + "' is in device memory");
      device->read_to_host(sample.data(), head, n);
      device->read_to_host(sample.data() + n, tail, n);
      head = sample.data();
      tail = sample.data() + n;
    }
    h = kv_checksum(head, n, h);
    h = kv_checksum(tail, n, h);
  }
  return hex64(h);
}

Engine::SnapshotStats Engine::save_kv(const std::filesystem::path& path) {
  drop_ahead();
  if (static_cast<int64_t>(ids_.size()) != n_past_)
    throw Error("KV snapshot " + path.string() + ": the context holds random K/V without token ids");
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = config();
  const DType dtype = kv_->kv_dtype();
  const std::string tmp = path.string() + ".tmp." + std::to_string(::getpid());
  SnapshotStats stats;
  stats.positions = n_past_;
  try {
    Fd fd(tmp, O_WRONLY | O_CREAT | O_TRUNC, "KV snapshot: cannot create");
    nlohmann::json sections = nlohmann::json::array();
    uint64_t offset = kKvSnapshotHeaderBytes;
    const size_t ids_bytes = ids_.size() * sizeof(int32_t);
    fd.write_at(ids_.data(), ids_bytes, offset);
    sections.push_back({{"name", "ids"}, {"offset", offset}, {"bytes", ids_bytes},
                        {"checksum", hex64(kv_checksum(ids_.data(), ids_bytes))}});
    offset += ids_bytes;
    // host [positions - first, head_dim] of the KV dtype: one head's K or V at a time
    const std::vector<int64_t> first = layer_first(c, n_past_);
    std::vector<char> staging;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const uint64_t begin = offset;
      uint64_t sum = 0;
      const int64_t from = first[static_cast<size_t>(l)];
      if (kv_->kept_from(l) > from)
        throw Error("KV snapshot " + path.string() + ": layer " + std::to_string(l) + " no longer holds position " +
                    std::to_string(from));
      staging.resize(block_bytes(c, dtype, n_past_ - from));
      for (int64_t h = 0; h < c.n_kv_heads; ++h)
        for (int which = 0; which < 2; ++which) {
          kv_->read_rows(l, h, which, from, n_past_, staging.data());
          sum = kv_checksum(staging.data(), staging.size(), sum);
          fd.write_at(staging.data(), staging.size(), offset);
          offset += staging.size();
        }
      sections.push_back({{"name", "layer " + std::to_string(l)}, {"offset", begin}, {"bytes", offset - begin},
                          {"checksum", hex64(sum)}});
    }
    const nlohmann::json index = {
        {"format", "headinfer KV snapshot"}, {"model_id", model_id_}, {"model_type", c.model_type},
        {"n_layers", c.n_layers}, {"n_kv_heads", c.n_kv_heads}, {"head_dim", c.head_dim},
        {"kv_dtype", std::string(dtype_name(dtype))}, {"positions", n_past_}, {"layer_first", first},
        {"plan", plan_json(*kv_)}, {"sections", sections}};
    const std::string text = index.dump();
    fd.write_at(text.data(), text.size(), offset);
    const std::vector<char> header = encode_header({kKvSnapshotVersion, offset, text.size(), kv_checksum(text.data(), text.size())});
    fd.write_at(header.data(), header.size(), 0);
    stats.bytes = offset + text.size();
    fd.close_synced();
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw Error("KV snapshot " + path.string() + ": rename failed: " + std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // The rename is durable once the folder is synced.
  const std::string dir = path.has_parent_path() ? path.parent_path().string() : ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  stats.seconds = seconds_since(t0);
  return stats;
}

Engine::SnapshotStats Engine::load_kv(const std::filesystem::path& path) {
  drop_ahead();
  const auto t0 = std::chrono::steady_clock::now();
  const std::string p = path.string(), where = "KV snapshot " + p + ": ";
  const ModelConfig& c = config();
  const DType dtype = kv_->kv_dtype();
  Fd fd(p, O_RDONLY, "KV snapshot: cannot open");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw Error(where + std::strerror(errno));
  const auto file_bytes = static_cast<uint64_t>(st.st_size);
  if (file_bytes < kKvSnapshotHeaderBytes) throw Error(where + "truncated (shorter than the header)");
  char head[kKvSnapshotHeaderBytes];
  fd.read_at(head, sizeof head, 0);
  const Header h = decode_header(head, p);
  if (h.index_offset < kKvSnapshotHeaderBytes || h.index_offset > file_bytes ||
      h.index_bytes != file_bytes - h.index_offset)
    throw Error(where + "truncated or padded: the index does not end the file");
  std::string text(h.index_bytes, '\0');
  fd.read_at(text.data(), text.size(), h.index_offset);
  if (kv_checksum(text.data(), text.size()) != h.index_checksum)
    throw Error(where + "index checksum mismatch (the file is corrupt)");
  nlohmann::json index;
  int64_t positions = 0;
  std::vector<nlohmann::json> sections;
  std::vector<int64_t> first;  // [n_layers]: the first position each layer's section holds
  try {
    index = nlohmann::json::parse(text);
    positions = index_integer<int64_t>(index.at("positions"), where, "positions");
    sections = index.at("sections").get<std::vector<nlohmann::json>>();
    if (h.version >= 2)
      for (const nlohmann::json& f : index.at("layer_first").get<std::vector<nlohmann::json>>())
        first.push_back(index_integer<int64_t>(f, where, "layer_first"));
    if (index.at("model_id").get<std::string>() != model_id_)
      throw Error(where + "made with another model (identity " + index.at("model_id").get<std::string>() +
                  ", this model is " + model_id_ + ")");
    if (index.at("kv_dtype").get<std::string>() != dtype_name(dtype))
      throw Error(where + "holds " + index.at("kv_dtype").get<std::string>() + " K/V, this engine keeps " +
                  std::string(dtype_name(dtype)) + " (load it on the same kind of device)");
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + "bad index: " + e.what());
  }
  if (positions < 0 || positions > context())
    throw Error(where + std::to_string(positions) + " positions do not fit the context of " +
                std::to_string(context()) + " (raise --ctx)");
  if (h.version < 2) first.assign(static_cast<size_t>(c.n_layers), 0);  // version 1: every layer from 0
  if (first.size() != static_cast<size_t>(c.n_layers)) throw Error(where + "layer_first does not name every layer");
  for (size_t l = 0; l < first.size(); ++l)
    if (first[l] < 0 || first[l] > positions ||
        first[l] > c.first_visible_key(static_cast<int64_t>(l), positions))  // a layer short of what a chunk sees
      throw Error(where + "layer " + std::to_string(l) + " starts at position " + std::to_string(first[l]) +
                  ", which does not fit its window at " + std::to_string(positions) + " positions");
  if (sections.size() != static_cast<size_t>(c.n_layers + 1)) throw Error(where + "wrong number of sections");
  // Every section where the layout puts it, inside the file, before anything is read.
  uint64_t offset = kKvSnapshotHeaderBytes;
  for (size_t i = 0; i < sections.size(); ++i) {
    const uint64_t want = i == 0 ? static_cast<uint64_t>(positions) * sizeof(int32_t)
                                 : 2 * static_cast<uint64_t>(c.n_kv_heads) * block_bytes(c, dtype, positions - first[i - 1]);
    if (section_offset(sections[i], "offset", where) != offset || section_offset(sections[i], "bytes", where) != want)
      throw Error(where + "section " + std::to_string(i) + " is not where the layout puts it");
    offset += want;
  }
  if (offset != h.index_offset) throw Error(where + "sections do not end at the index");
  auto expect_sum = [&](size_t i, uint64_t got) {
    if (section_text(sections[i], "checksum") != hex64(got)) {
      const std::string name = section_text(sections[i], "name");
      throw Error(where + "checksum mismatch in section '" + (name.empty() ? "?" : name) + "' (the file is corrupt)");
    }
  };

  std::vector<int32_t> ids(static_cast<size_t>(positions));
  fd.read_at(ids.data(), ids.size() * sizeof(int32_t), kKvSnapshotHeaderBytes);
  expect_sum(0, kv_checksum(ids.data(), ids.size() * sizeof(int32_t)));
  for (int32_t id : ids)
    if (id < 0 || id >= c.vocab_size) throw Error(where + "token id " + std::to_string(id) + " outside the vocabulary");
  reset();  // from here a failure leaves an empty context
  try {
    std::vector<char> staging;  // host [positions - first, head_dim] of the KV dtype
    offset = kKvSnapshotHeaderBytes + ids.size() * sizeof(int32_t);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      uint64_t sum = 0;
      // Only what a chunk at `positions` sees is written (a version 1 file holds more of a window
      // layer than this engine may keep).
      const int64_t from = first[static_cast<size_t>(l)], keep = std::max(from, c.first_visible_key(l, positions));
      const size_t skip = block_bytes(c, dtype, keep - from);
      staging.resize(block_bytes(c, dtype, positions - from));
      for (int64_t hd = 0; hd < c.n_kv_heads; ++hd)
        for (int which = 0; which < 2; ++which) {
          fd.read_at(staging.data(), staging.size(), offset);
          offset += staging.size();
          sum = kv_checksum(staging.data(), staging.size(), sum);
          kv_->write_rows(l, hd, which, keep, positions, staging.data() + skip);
        }
      expect_sum(static_cast<size_t>(l) + 1, sum);
    }
    kv_->truncate(positions);
  } catch (...) {
    reset();
    throw;
  }
  n_past_ = positions;
  ids_.assign(ids.begin(), ids.end());  // keeps the capacity reserved for the whole context
  return {positions, file_bytes, seconds_since(t0)};
}

}  // namespace headinfer
