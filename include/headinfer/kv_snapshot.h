#pragma once
// KV snapshots on disk (Engine::save_kv / load_kv) and what they are checked with.
//
// File layout (little-endian), version 2:
//   [0, 48)   header: magic "HIKVSNAP", u32 version, u32 zero, u64 index_offset, u64 index_bytes,
//             u64 index_checksum, u64 header_checksum (of bytes [0, 40))
//   [48, ...) sections: "ids" (int32 [positions]), then one per layer "layer L": for each kv head
//             h, its K rows then its V rows, [positions - first_L, head_dim] of the KV dtype each:
//             the rows of positions [first_L, positions), first_L being the first key a chunk at
//             `positions` sees (0 in a full-attention layer; a sliding-window layer keeps only its
//             window, so that is all a snapshot holds of it)
//   index     JSON at index_offset: format, model_id, model shape, kv_dtype, positions,
//             layer_first ([n_layers] first_L), the plan it was made under, and each section's
//             offset, bytes and checksum (16 hex digits)
// The index goes last because its checksums are known only once the sections are written.
// Version 1 files (every layer from position 0, no layer_first) are read too.
#include <cstddef>
#include <cstdint>
#include <string>

#include "headinfer/checkpoint.h"

namespace headinfer {

class Device;

inline constexpr char kKvSnapshotMagic[8] = {'H', 'I', 'K', 'V', 'S', 'N', 'A', 'P'};
inline constexpr uint32_t kKvSnapshotVersion = 2;
inline constexpr size_t kKvSnapshotHeaderBytes = 48;

// A 64-bit checksum of `bytes` bytes (four multiply-rotate lanes over 8-byte words, then the
// tail): fast enough to run at disk speed, for detecting corruption, not tampering.
uint64_t kv_checksum(const void* data, size_t bytes, uint64_t seed = 0);

// The model's identity as 16 hex digits: its config, every tensor's name, dtype and shape, and
// the first and last 4 KiB of each tensor's bytes (so two random checkpoints of one shape differ),
// without reading all the weights. Tensors in device memory (TensorView::on_device) are sampled
// through `device`, the device they live on; without one such a tensor is an Error.
std::string model_identity(const Checkpoint& checkpoint, Device* device = nullptr);

}  // namespace headinfer
