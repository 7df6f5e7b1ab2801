#pragma once
// Random K/V for decode-only runs (KvCache::fill_random): every element is a pure function of
// (seed, layer, kv head, K or V, position, channel), so the values are the same whichever tier a
// head block lives in, whatever its group size, and however many threads write them.
#include <cstdint>
#include <vector>

#include "headinfer/backend.h"

namespace headinfer {

// One head's K or V, or a run of its rows: `dst` holds the rows of positions row0, row0 + 1, ...
// as [rows, head_dim] of `dtype`, contiguous (host memory for fill_random_host_blocks: a whole
// block, or the head's rows in one slab of the host tier; device memory for
// fill_random_device_block). A position's values do not depend on where its run starts.
struct RandomKvBlock {
  void* dst = nullptr;
  int64_t layer = 0;
  int64_t kv_head = 0;
  int which = 0;      // 0: K, 1: V
  int64_t row0 = 0;   // position of dst's first row
  int64_t n_rows = 0; // fill_random_host_blocks: rows to fill from dst
};

// Fills each block's n_rows rows with uniform values in [-1, 1) rounded to `dtype`, split into
// pieces over every core (the host tier of a 1M-token context is tens of GiB).
void fill_random_host_blocks(const std::vector<RandomKvBlock>& blocks, DType dtype, int64_t head_dim, uint64_t seed);

// The same values written into device memory: rows [0, n_rows) of block.dst, holding positions
// block.row0 onwards, generated in host chunks of at most staging.size() bytes and copied with
// Device::write_from_host.
void fill_random_device_block(Device& device, const RandomKvBlock& block, DType dtype, int64_t n_rows,
                              int64_t head_dim, uint64_t seed, std::vector<char>& staging);

}  // namespace headinfer
