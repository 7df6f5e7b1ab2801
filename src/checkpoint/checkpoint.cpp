#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "headinfer/checkpoint.h"
#include "headinfer/error.h"

namespace headinfer {
namespace fs = std::filesystem;
using nlohmann::json;

std::unique_ptr<Checkpoint> Checkpoint::open(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw Error(dir.string() + ": not a directory (expected a checkpoint folder)");
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = dir;
  ckpt->config_ = load_model_config(dir);

  const fs::path index_path = dir / "model.safetensors.index.json";
  std::map<std::string, std::string> weight_map;  // tensor -> shard file name
  std::vector<std::string> shard_names;
  if (fs::exists(index_path)) {
    std::ifstream in(index_path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    json index;
    try {
      index = json::parse(ss.str());
    } catch (const json::exception& e) {  // parse_error, out_of_range (1E400)
      throw Error(index_path.string() + ": invalid JSON (" + std::string(e.what()) + ")");
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      throw Error(index_path.string() + ": no 'weight_map' object");
    std::set<std::string> shards;
    for (const auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) throw Error(index_path.string() + ": weight_map entry '" + name + "' is not a file name");
      const std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f == "." || f == "..")
        throw Error(index_path.string() + ": shard name '" + f + "' must be a file in the checkpoint folder");
      weight_map[name] = f;
      shards.insert(f);
    }
    for (const std::string& s : shards) {
      if (!fs::exists(dir / s))
        throw Error((dir / s).string() + ": shard named by model.safetensors.index.json is missing");
      shard_names.push_back(s);
    }
  } else if (fs::exists(dir / "model.safetensors")) {
    shard_names.push_back("model.safetensors");
  } else {
    for (const auto& entry : fs::directory_iterator(dir))
      if (entry.path().extension() == ".safetensors") shard_names.push_back(entry.path().filename().string());
    std::sort(shard_names.begin(), shard_names.end());
    if (shard_names.empty()) throw Error(dir.string() + ": no *.safetensors file and no model.safetensors.index.json");
  }

  for (const std::string& s : shard_names) {
    ckpt->files_.push_back(SafetensorsFile::open(dir / s));
    const SafetensorsFile& file = *ckpt->files_.back();
    for (const TensorView& t : file.tensors()) {
      auto [it, inserted] = ckpt->by_name_.emplace(t.name, &t);
      if (!inserted)
        throw Error(file.path() + ": tensor '" + t.name + "' is also in " + it->second->file);
    }
  }
  for (const auto& [name, file] : weight_map) {
    auto it = ckpt->by_name_.find(name);
    if (it == ckpt->by_name_.end() || fs::path(it->second->file).filename() != file)
      throw Error(index_path.string() + ": tensor '" + name + "' is not in its shard " + file);
  }
  return ckpt;
}

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorView& Checkpoint::require(const std::string& name, std::span<const int64_t> shape) const {
  const TensorView* t = find(name);
  TensorView expected;
  expected.shape.assign(shape.begin(), shape.end());
  if (t == nullptr)
    throw Error(dir_.string() + ": tensor '" + name + "' " + expected.shape_string() +
                " is missing from the checkpoint");
  if (!std::equal(t->shape.begin(), t->shape.end(), shape.begin(), shape.end()))
    throw Error(t->file + ": tensor '" + name + "' has shape " + t->shape_string() + " but config.json implies " +
                expected.shape_string());
  return *t;
}

std::vector<const TensorView*> Checkpoint::tensors() const {
  std::vector<const TensorView*> out;
  for (const auto& [name, t] : by_name_) out.push_back(t);
  return out;
}

size_t Checkpoint::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, t] : by_name_) n += t->nbytes;
  return n;
}

}  // namespace headinfer
