#include "headinfer/head_store.h"

#include <string>

#include "headinfer/error.h"

namespace headinfer {

HeadStore::HeadStore(Device& device, Transfer& transfer, const ModelConfig& config, const Plan& plan, DType dtype)
    : device_(device),
      transfer_(transfer),
      capacity_(plan.context),
      head_dim_(config.head_dim),
      group_size_(plan.group_size),
      groups_per_layer_(plan.groups_per_layer),
      dtype_(dtype),
      elem_bytes_(dtype_size(dtype)),
      block_pitch_(static_cast<size_t>(plan.context * config.head_dim) * dtype_size(dtype)) {
  if (static_cast<int64_t>(elem_bytes_) != plan.kv_elem_bytes)
    throw Error("head store: the plan was made for " + std::to_string(plan.kv_elem_bytes) +
                "-byte KV elements but the store holds " + std::string(dtype_name(dtype)));
  if (plan.group_size < 1 || plan.groups_per_layer * plan.group_size != config.n_kv_heads ||
      plan.n_groups != config.n_layers * plan.groups_per_layer ||
      static_cast<int64_t>(plan.resident.size()) != plan.n_groups)
    throw Error("head store: the plan does not match the model's layers and kv heads");
  const size_t group_bytes = 2 * static_cast<size_t>(group_size_) * block_pitch_;
  groups_.resize(static_cast<size_t>(plan.n_groups));
  try {
    for (int64_t l = 0; l < config.n_layers; ++l)
      for (int64_t g = 0; g < groups_per_layer_; ++g) {
        Group& grp = groups_[index(l, g)];
        if (plan.is_resident(l, g)) {
          grp.tier = Tier::Gpu;
          grp.base = device_.alloc(group_bytes, "resident KV head blocks");
          bytes_gpu_ += group_bytes;
        } else {
          grp.tier = Tier::Host;
          grp.base = transfer_.alloc_host(group_bytes, "host-tier KV head blocks");
          bytes_host_ += group_bytes;
        }
      }
  } catch (...) {
    release();  // the destructor does not run for a constructor that throws
    throw;
  }
}

HeadStore::~HeadStore() { release(); }

void HeadStore::release() {
  for (Group& g : groups_) {
    if (g.base == nullptr) continue;
    if (g.tier == Tier::Gpu)
      device_.free(g.base);
    else
      transfer_.free_host(g.base);
    g.base = nullptr;
  }
}

void* HeadStore::k_block(int64_t layer, int64_t kv_head) const {
  const int64_t g = kv_head / group_size_, j = kv_head % group_size_;
  return static_cast<char*>(group_base(layer, g)) + static_cast<size_t>(j) * block_pitch_;
}

void* HeadStore::v_block(int64_t layer, int64_t kv_head) const {
  const int64_t g = kv_head / group_size_, j = kv_head % group_size_;
  return static_cast<char*>(group_base(layer, g)) + static_cast<size_t>(group_size_ + j) * block_pitch_;
}

void HeadStore::set_length(int64_t n) {
  if (n < 0 || n > capacity_)
    throw Error("head store: length " + std::to_string(n) + " outside 0.." + std::to_string(capacity_));
  length_ = n;
}

}  // namespace headinfer
