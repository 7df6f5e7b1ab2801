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
      slab_positions_(plan.host_slab_positions > 0 ? plan.host_slab_positions : std::max<int64_t>(1, plan.context)),
      n_slabs_(plan.context > 0 ? (plan.context + slab_positions_ - 1) / slab_positions_ : 0),
      layers_(plan.layers) {
  if (static_cast<int64_t>(elem_bytes_) != plan.kv_elem_bytes)
    throw Error("head store: the plan was made for " + std::to_string(plan.kv_elem_bytes) +
                "-byte KV elements but the store holds " + std::string(dtype_name(dtype)));
  if (plan.group_size < 1 || plan.groups_per_layer * plan.group_size != config.n_kv_heads ||
      plan.n_groups != config.n_layers * plan.groups_per_layer ||
      static_cast<int64_t>(plan.resident.size()) != plan.n_groups ||
      static_cast<int64_t>(plan.layers.size()) != config.n_layers)
    throw Error("head store: the plan does not match the model's layers and kv heads");
  for (const LayerKv& k : layers_)
    if (k.device_rows < 1 || k.device_rows > capacity_ || k.host_slabs < 1 || k.host_slabs > n_slabs_ ||
        (k.window == 0 && (k.device_rows != capacity_ || k.host_slabs != n_slabs_)))
      throw Error("head store: the plan's per-layer KV sizes do not match its context");
  groups_.resize(static_cast<size_t>(plan.n_groups));
  try {
    for (int64_t l = 0; l < config.n_layers; ++l)
      for (int64_t g = 0; g < groups_per_layer_; ++g) {
        Group& grp = groups_[index(l, g)];
        const LayerKv& k = layers_[static_cast<size_t>(l)];
        grp.window = k.window;
        if (plan.is_resident(l, g)) {
          grp.tier = Tier::Gpu;
          grp.rows = k.device_rows;
          const size_t bytes = 2 * static_cast<size_t>(group_size_ * grp.rows) * row_bytes_;
          grp.base = device_.alloc(bytes, "resident KV head blocks");
          bytes_gpu_ += bytes;
        } else {
          // Fixed-size tables, so a host task reading a head's pages never sees them move.
          grp.tier = Tier::Host;
          grp.ring = k.host_slabs;
          grp.slabs.assign(static_cast<size_t>(grp.ring), nullptr);
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
    g.n_allocated = 0;
    g.n_mapped = 0;
  }
}

void HeadStore::reset() {
  length_ = 0;
  for (Group& g : groups_) {
    g.origin = 0;
    if (g.tier == Tier::Host && is_ring(g)) g.n_mapped = 0;  // its slabs map from slab 0 again
  }
}

int64_t HeadStore::slab_rows(int64_t slab) const {
  return std::min(slab_positions_, capacity_ - slab * slab_positions_);
}

int64_t HeadStore::physical_rows(const Group& grp, int64_t slab) const {
  return is_ring(grp) ? slab_positions_ : slab_rows(slab);
}

int64_t HeadStore::first_kept(const Group& grp) const {
  if (grp.tier == Tier::Gpu) return grp.origin;
  return is_ring(grp) ? std::max<int64_t>(0, grp.n_mapped - grp.ring) * slab_positions_ : 0;
}

const HeadStore::Group& HeadStore::host_group(int64_t layer, int64_t group) const {
  const Group& grp = groups_[index(layer, group)];
  if (grp.tier != Tier::Host) throw Error("head store: a slab of a resident group was asked for");
  return grp;
}

HeadStore::Group& HeadStore::resident(int64_t layer, int64_t group) {
  Group& grp = groups_[index(layer, group)];
  if (grp.tier != Tier::Gpu) throw Error("head store: the device block of a host-tier group was asked for");
  return grp;
}

const HeadStore::Group& HeadStore::resident(int64_t layer, int64_t group) const {
  return const_cast<HeadStore*>(this)->resident(layer, group);
}

DeviceGroup HeadStore::resident_group(int64_t layer, int64_t group) const {
  const Group& grp = resident(layer, group);
  return {grp.base, grp.rows, grp.origin};
}

void* HeadStore::k_block(int64_t layer, int64_t kv_head) const {
  const Group& grp = resident(layer, kv_head / group_size_);
  return static_cast<char*>(grp.base) + static_cast<size_t>(kv_head % group_size_ * grp.rows) * row_bytes_;
}

void* HeadStore::v_block(int64_t layer, int64_t kv_head) const {
  const Group& grp = resident(layer, kv_head / group_size_);
  return static_cast<char*>(grp.base) +
         static_cast<size_t>((group_size_ + kv_head % group_size_) * grp.rows) * row_bytes_;
}

bool HeadStore::slides(int64_t layer, int64_t group, int64_t end) const {
  const Group& grp = groups_[index(layer, group)];
  return grp.tier == Tier::Gpu && grp.window != 0 && end - grp.origin > grp.rows;
}

void HeadStore::make_room(int64_t layer, int64_t group, int64_t pos0, int64_t end) {
  Group& grp = groups_[index(layer, group)];
  if (!slides(layer, group, end)) return;
  const int64_t lo = std::max<int64_t>(0, pos0 - grp.window + 1);
  if (lo < grp.origin)
    throw Error("head store: layer " + std::to_string(layer) + " no longer holds position " + std::to_string(lo) +
                " (it keeps its window from " + std::to_string(grp.origin) + "): recompute from the start");
  if (end - lo > grp.rows)
    throw Error("head store: a chunk of " + std::to_string(end - pos0) + " positions does not fit layer " +
                std::to_string(layer) + "'s window block of " + std::to_string(grp.rows) + " (planned for shorter chunks)");
  const int64_t n = pos0 - lo, shift = lo - grp.origin;
  if (n > 0) {
    // Rows [shift, shift + n) of each of the 2G heads go to rows [0, n): the block's rows are
    // 2 (W - 1) + C, so a chunk runs past them only when shift > W - 1 >= n (no overlap).
    if (shift < n) throw Error("head store: a window block's move would overlap itself");
    const int64_t d = head_dim_, stride = grp.rows * d;
    char* base = static_cast<char*>(grp.base);
    device_.ops().copy(MatView{base + static_cast<size_t>(shift) * row_bytes_, dtype_, 2 * group_size_, n * d, stride},
                       MatView{base, dtype_, 2 * group_size_, n * d, stride});
  }
  grp.origin = lo;
}

void HeadStore::rebase(int64_t layer, int64_t group, int64_t begin, int64_t end) {
  Group& grp = resident(layer, group);
  if (begin >= grp.origin && end - grp.origin <= grp.rows) return;
  if (end - begin > grp.rows)
    throw Error("head store: " + std::to_string(end - begin) + " positions of layer " + std::to_string(layer) +
                " do not fit its block of " + std::to_string(grp.rows));
  grp.origin = begin;
}

void HeadStore::reserve(int64_t layer, int64_t group, int64_t end) {
  Group& grp = groups_[index(layer, group)];
  if (grp.tier != Tier::Host) return;
  if (end > capacity_)
    throw Error("head store: " + std::to_string(end) + " positions reserved, the store holds " +
                std::to_string(capacity_));
  const auto G = static_cast<size_t>(group_size_);
  while (grp.n_mapped * slab_positions_ < end) {
    const int64_t j = grp.n_mapped, r = j % grp.ring;
    const size_t head_bytes = static_cast<size_t>(physical_rows(grp, j)) * row_bytes_;
    if (r >= grp.n_allocated) {  // a ring allocates its slabs in order too: r == n_allocated
      const size_t bytes = 2 * G * head_bytes;
      grp.slabs[static_cast<size_t>(r)] = transfer_.alloc_host(bytes, "host-tier KV slab");
      bytes_host_ += bytes;
      ++grp.n_allocated;
    }
    char* slab = static_cast<char*>(grp.slabs[static_cast<size_t>(r)]);
    for (size_t w = 0; w < 2; ++w)
      for (size_t h = 0; h < G; ++h)
        grp.pages[(w * G + h) * static_cast<size_t>(n_slabs_) + static_cast<size_t>(j)] =
            slab + (w * G + h) * head_bytes;
    ++grp.n_mapped;
  }
}

int64_t HeadStore::reserved(int64_t layer, int64_t group) const {
  const Group& grp = host_group(layer, group);
  return std::min(capacity_, grp.n_mapped * slab_positions_);
}

int64_t HeadStore::kept_from(int64_t layer, int64_t group) const { return first_kept(groups_[index(layer, group)]); }

const void* const* HeadStore::host_pages(int64_t layer, int64_t kv_head, int which) const {
  const Group& grp = host_group(layer, kv_head / group_size_);
  const auto slot = static_cast<size_t>(which * group_size_ + kv_head % group_size_);
  return grp.pages.data() + slot * static_cast<size_t>(n_slabs_);
}

void* HeadStore::host_row(int64_t layer, int64_t kv_head, int which, int64_t pos) const {
  const Group& grp = host_group(layer, kv_head / group_size_);
  if (pos < first_kept(grp) || pos >= reserved(layer, kv_head / group_size_))
    throw Error("head store: row " + std::to_string(pos) + " of a host-tier head is not reserved or no longer kept");
  const int64_t j = pos / slab_positions_;
  const void* page = host_pages(layer, kv_head, which)[j];
  return const_cast<char*>(static_cast<const char*>(page)) +
         static_cast<size_t>(pos - j * slab_positions_) * row_bytes_;
}

// fn(the physical slab holding slab j, its rows, first position of the piece, the piece's rows)
// for each slab [begin, end) touches.
template <class Fn>
void HeadStore::for_each_slab(const Group& grp, int64_t begin, int64_t end, Fn&& fn) const {
  if (begin < first_kept(grp) || end > std::min(capacity_, grp.n_mapped * slab_positions_))
    throw Error("head store: rows " + std::to_string(begin) + ".." + std::to_string(end) +
                " of a host-tier group are not reserved or no longer kept");
  for (int64_t pos = begin; pos < end;) {
    const int64_t j = pos / slab_positions_;
    const int64_t n = std::min(end, (j + 1) * slab_positions_) - pos;
    fn(static_cast<char*>(grp.slabs[static_cast<size_t>(j % grp.ring)]), physical_rows(grp, j), pos, n);
    pos += n;
  }
}

namespace {

void check_device_rows(const DeviceGroup& dg, int64_t begin, int64_t end) {
  if (begin < dg.origin || end - dg.origin > dg.rows)
    throw Error("head store: rows " + std::to_string(begin) + ".." + std::to_string(end) +
                " are outside the device group's positions " + std::to_string(dg.origin) + ".." +
                std::to_string(dg.origin + dg.rows));
}

}  // namespace

void HeadStore::copy_to_device(Stream& stream, int64_t layer, int64_t group, const DeviceGroup& dg, int64_t begin,
                               int64_t end) const {
  const Group& grp = host_group(layer, group);
  check_device_rows(dg, begin, end);
  const size_t pitch = static_cast<size_t>(dg.rows) * row_bytes_;
  for_each_slab(grp, begin, end, [&](char* slab, int64_t slab_rows, int64_t pos, int64_t n) {
    stream.copy_2d(static_cast<char*>(dg.base) + static_cast<size_t>(pos - dg.origin) * row_bytes_, pitch,
                   slab + static_cast<size_t>(pos % slab_positions_) * row_bytes_,
                   static_cast<size_t>(slab_rows) * row_bytes_, static_cast<size_t>(n) * row_bytes_,
                   2 * static_cast<size_t>(group_size_));
  });
}

void HeadStore::copy_from_device(Stream& stream, int64_t layer, int64_t group, const DeviceGroup& dg,
                                 int64_t begin, int64_t end) const {
  const Group& grp = host_group(layer, group);
  check_device_rows(dg, begin, end);
  const size_t pitch = static_cast<size_t>(dg.rows) * row_bytes_;
  for_each_slab(grp, begin, end, [&](char* slab, int64_t slab_rows, int64_t pos, int64_t n) {
    stream.copy_2d(slab + static_cast<size_t>(pos % slab_positions_) * row_bytes_,
                   static_cast<size_t>(slab_rows) * row_bytes_,
                   static_cast<const char*>(dg.base) + static_cast<size_t>(pos - dg.origin) * row_bytes_, pitch,
                   static_cast<size_t>(n) * row_bytes_, 2 * static_cast<size_t>(group_size_));
  });
}

void HeadStore::set_length(int64_t n) {
  if (n < 0 || n > capacity_)
    throw Error("head store: length " + std::to_string(n) + " outside 0.." + std::to_string(capacity_));
  length_ = n;
}

}  // namespace headinfer
