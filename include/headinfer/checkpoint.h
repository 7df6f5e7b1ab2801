#pragma once
// Checkpoint: a Hugging Face model folder (config.json, *.safetensors, optional sharded index),
// memory-mapped and fully validated before any tensor is used.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "headinfer/config.h"
#include "headinfer/dtype.h"

namespace headinfer {

// A read-only view of one tensor inside a mapped file. Row-major, `shape` as stored.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // points into the mapping; valid while the owning file lives
  size_t nbytes = 0;
  std::string file;            // for error messages
  // `data` is memory of the device the engine runs on (a face's in-memory tensor already there,
  // Checkpoint::from_memory): Model uses it in place instead of uploading a copy.
  bool on_device = false;

  int64_t numel() const;
  std::string shape_string() const;  // "[320, 64]"
};

// One .safetensors file, mmap'ed. open() validates: header length against the file size, JSON,
// dtype names, shapes, offsets (ordered, contiguous, no overlap, inside the file),
// byte size = numel x dtype size, duplicate names.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorView> tensors_;
};

// A tensor to write: used by `headinfer make-model` and by tests that build broken files.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // numel x dtype_size, little-endian
};
// The validation open() does, on a safetensors image in memory (`size` bytes at `bytes`): the
// tensors, whose data point into `bytes`. `origin` names the file in errors. Throws Error.
// (open() maps the file and calls this; the fuzz target calls it directly.)
std::vector<TensorView> parse_safetensors(const uint8_t* bytes, size_t size, const std::string& origin);

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors);

class Checkpoint {
 public:
  // DIR holds config.json and either model.safetensors.index.json + its shards, or *.safetensors.
  static std::unique_ptr<Checkpoint> open(const std::filesystem::path& dir);
  // Every tensor `config` needs, with deterministic random values (uniform in +-1/sqrt(fan_in),
  // norms near 1), held in memory: real shapes for benchmarks, no file and no download.
  static std::unique_ptr<Checkpoint> random(const nlohmann::json& config, DType dtype, uint64_t seed);
  // A checkpoint over tensors someone else owns (the Python face's state_dict, through DLPack):
  // `config` and `generation_config` (null when absent) are parsed as config.json and
  // generation_config.json are; `tensors` carry name, dtype, shape, data, nbytes and on_device
  // and must outlive the checkpoint and every Model made from it. `origin` names the source in
  // error messages. Throws Error on a duplicate name, a byte size that disagrees with the shape,
  // a null pointer, or device memory not aligned to 64 bytes.
  static std::unique_ptr<Checkpoint> from_memory(const nlohmann::json& config, const nlohmann::json& generation_config,
                                                 std::vector<TensorView> tensors, const std::string& origin);
  // The tensors in name order (for writing a random checkpoint to disk).
  std::vector<const TensorView*> tensors() const;

  const ModelConfig& config() const { return config_; }
  const std::filesystem::path& dir() const { return dir_; }
  // nullptr when absent.
  const TensorView* find(const std::string& name) const;
  // The tensor, checked against the expected shape; throws a clear Error otherwise.
  const TensorView& require(const std::string& name, std::span<const int64_t> shape) const;
  size_t total_bytes() const;

 private:
  std::filesystem::path dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  // Random checkpoints: the tensors and their bytes, owned here.
  std::vector<std::unique_ptr<TensorView>> owned_views_;
  std::vector<std::unique_ptr<uint8_t[]>> owned_bytes_;
  std::map<std::string, const TensorView*> by_name_;
  std::vector<TensorView> memory_views_;  // from_memory: views of memory owned by the caller
};

}  // namespace headinfer
