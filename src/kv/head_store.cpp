#include "headinfer/head_store.h"

#include <algorithm>
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
      row_bytes_(static_cast<size_t>(config.head_dim) * dtype_size(dtype)),
      block_pitch_(static_cast<size_t>(plan.context) * row_bytes_),
      slab_positions_(plan.host_slab_positions > 0 ? plan.host_slab_positions : std::max<int64_t>(1, plan.context)),
      n_slabs_(plan.context > 0 ? (plan.context + slab_positions_ - 1) / slab_positions_ : 0) {
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
          // Fixed-size tables, so a host task reading a head's pages never sees them move.
          grp.tier = Tier::Host;
          grp.slabs.assign(static_cast<size_t>(n_slabs_), nullptr);
          grp.pages.assign(static_cast<size_t>(2 * group_size_ * n_slabs_), nullptr);
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
    if (g.tier == Tier::Gpu && g.base != nullptr) device_.free(g.base);
    g.base = nullptr;
    for (void*& s : g.slabs)
      if (s != nullptr) {
        transfer_.free_host(s);
        s = nullptr;
      }
    g.n_reserved = 0;
  }
}

int64_t HeadStore::slab_rows(int64_t slab) const {
  return std::min(slab_positions_, capacity_ - slab * slab_positions_);
}

const HeadStore::Group& HeadStore::host_group(int64_t layer, int64_t group) const {
  const Group& grp = groups_[index(layer, group)];
  if (grp.tier != Tier::Host) throw Error("head store: a slab of a resident group was asked for");
  return grp;
}

void* HeadStore::group_base(int64_t layer, int64_t group) const {
  const Group& grp = groups_[index(layer, group)];
  if (grp.tier != Tier::Gpu) throw Error("head store: the base of a host-tier group was asked for");
  return grp.base;
}

void* HeadStore::k_block(int64_t layer, int64_t kv_head) const {
  const int64_t g = kv_head / group_size_, j = kv_head % group_size_;
  return static_cast<char*>(group_base(layer, g)) + static_cast<size_t>(j) * block_pitch_;
}

void* HeadStore::v_block(int64_t layer, int64_t kv_head) const {
  const int64_t g = kv_head / group_size_, j = kv_head % group_size_;
  return static_cast<char*>(group_base(layer, g)) + static_cast<size_t>(group_size_ + j) * block_pitch_;
}

void HeadStore::reserve(int64_t layer, int64_t group, int64_t end) {
  Group& grp = groups_[index(layer, group)];
  if (grp.tier != Tier::Host) return;
  if (end > capacity_)
    throw Error("head store: " + std::to_string(end) + " positions reserved, the store holds " +
                std::to_string(capacity_));
  const auto G = static_cast<size_t>(group_size_);
  while (grp.n_reserved * slab_positions_ < end) {
    const int64_t j = grp.n_reserved;
    const size_t head_bytes = static_cast<size_t>(slab_rows(j)) * row_bytes_;
    const size_t bytes = 2 * G * head_bytes;
    char* slab = static_cast<char*>(transfer_.alloc_host(bytes, "host-tier KV slab"));
    grp.slabs[static_cast<size_t>(j)] = slab;
    for (size_t w = 0; w < 2; ++w)
      for (size_t h = 0; h < G; ++h)
        grp.pages[(w * G + h) * static_cast<size_t>(n_slabs_) + static_cast<size_t>(j)] =
            slab + (w * G + h) * head_bytes;
    bytes_host_ += bytes;
    ++grp.n_reserved;
  }
}

int64_t HeadStore::reserved(int64_t layer, int64_t group) const {
  const Group& grp = host_group(layer, group);
  return std::min(capacity_, grp.n_reserved * slab_positions_);
}

const void* const* HeadStore::host_pages(int64_t layer, int64_t kv_head, int which) const {
  const Group& grp = host_group(layer, kv_head / group_size_);
  const auto slot = static_cast<size_t>(which * group_size_ + kv_head % group_size_);
  return grp.pages.data() + slot * static_cast<size_t>(n_slabs_);
}

void* HeadStore::host_row(int64_t layer, int64_t kv_head, int which, int64_t pos) const {
  if (pos < 0 || pos >= reserved(layer, kv_head / group_size_))
    throw Error("head store: row " + std::to_string(pos) + " of a host-tier head is not reserved");
  const int64_t j = pos / slab_positions_;
  const void* page = host_pages(layer, kv_head, which)[j];
  return const_cast<char*>(static_cast<const char*>(page)) +
         static_cast<size_t>(pos - j * slab_positions_) * row_bytes_;
}

// fn(slab j, slab base, first position of the piece, its rows) for each slab [begin, end) touches.
template <class Fn>
void HeadStore::for_each_slab(const Group& grp, int64_t begin, int64_t end, Fn&& fn) const {
  if (begin < 0 || end > std::min(capacity_, grp.n_reserved * slab_positions_))
    throw Error("head store: rows " + std::to_string(begin) + ".." + std::to_string(end) +
                " of a host-tier group are not reserved");
  for (int64_t pos = begin; pos < end;) {
    const int64_t j = pos / slab_positions_;
    const int64_t n = std::min(end, (j + 1) * slab_positions_) - pos;
    fn(j, static_cast<char*>(grp.slabs[static_cast<size_t>(j)]), pos, n);
    pos += n;
  }
}

void HeadStore::copy_to_device(Stream& stream, int64_t layer, int64_t group, void* device_group, int64_t begin,
                               int64_t end) const {
  const Group& grp = host_group(layer, group);
  for_each_slab(grp, begin, end, [&](int64_t j, char* slab, int64_t pos, int64_t n) {
    const size_t slab_pitch = static_cast<size_t>(slab_rows(j)) * row_bytes_;
    stream.copy_2d(static_cast<char*>(device_group) + static_cast<size_t>(pos) * row_bytes_, block_pitch_,
                   slab + static_cast<size_t>(pos - j * slab_positions_) * row_bytes_, slab_pitch,
                   static_cast<size_t>(n) * row_bytes_, 2 * static_cast<size_t>(group_size_));
  });
}

void HeadStore::copy_from_device(Stream& stream, int64_t layer, int64_t group, const void* device_group,
                                 int64_t begin, int64_t end) const {
  const Group& grp = host_group(layer, group);
  for_each_slab(grp, begin, end, [&](int64_t j, char* slab, int64_t pos, int64_t n) {
    const size_t slab_pitch = static_cast<size_t>(slab_rows(j)) * row_bytes_;
    stream.copy_2d(slab + static_cast<size_t>(pos - j * slab_positions_) * row_bytes_, slab_pitch,
                   static_cast<const char*>(device_group) + static_cast<size_t>(pos) * row_bytes_, block_pitch_,
                   static_cast<size_t>(n) * row_bytes_, 2 * static_cast<size_t>(group_size_));
  });
}

void HeadStore::set_length(int64_t n) {
  if (n < 0 || n > capacity_)
    throw Error("head store: length " + std::to_string(n) + " outside 0.." + std::to_string(capacity_));
  length_ = n;
}

}  // namespace headinfer
