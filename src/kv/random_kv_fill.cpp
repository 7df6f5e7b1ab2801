#include "random_kv_fill.h"

#include <algorithm>
#include <atomic>
#include <thread>

namespace headinfer {
namespace {

// Counter-based (as in checkpoint/random_model.cpp): element i needs no state from element i - 1,
// so any piece of any block is generated independently.
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t block_key(uint64_t seed, const RandomKvBlock& b) {
  const uint64_t id = (static_cast<uint64_t>(b.layer) << 32) ^ (static_cast<uint64_t>(b.kv_head) << 1) ^
                      static_cast<uint64_t>(b.which);
  return splitmix64(splitmix64(seed) ^ splitmix64(id));
}

// Elements [begin, end) of a block (element i = row * head_dim + channel) into dst[0 ..).
void fill_range(void* dst, DType dtype, uint64_t key, int64_t begin, int64_t end) {
  uint64_t r = 0;
  for (int64_t i = begin; i < end; ++i) {
    // One hash gives elements 2j and 2j + 1 24 random bits each (exact in f32, so every dtype
    // rounds the same f32 value): the hash is most of the cost of filling tens of GiB.
    if (i == begin || (i & 1) == 0) r = splitmix64(key ^ static_cast<uint64_t>(i >> 1));
    const uint64_t bits24 = (i & 1) != 0 ? (r >> 16) & 0xffffffu : r >> 40;
    const float x = static_cast<float>(bits24) * (2.0f / 16777216.0f) - 1.0f;
    const size_t j = static_cast<size_t>(i - begin);
    switch (dtype) {
      case DType::F32: static_cast<float*>(dst)[j] = x; break;
      case DType::BF16: static_cast<uint16_t*>(dst)[j] = f32_to_bf16(x); break;
      case DType::F16: static_cast<uint16_t*>(dst)[j] = f32_to_f16(x); break;
    }
  }
}

struct Piece {
  char* dst;
  uint64_t key;
  int64_t begin, end;
};

void run_pieces(const std::vector<Piece>& pieces, DType dtype) {
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t p = next++; p < pieces.size(); p = next++)
      fill_range(pieces[p].dst, dtype, pieces[p].key, pieces[p].begin, pieces[p].end);
  };
  const size_t n_threads = std::min<size_t>(std::max(1u, std::thread::hardware_concurrency()), pieces.size());
  std::vector<std::thread> workers;
  for (size_t t = 1; t < n_threads; ++t) workers.emplace_back(work);
  work();
  for (std::thread& w : workers) w.join();
}

// Pieces of about 1M elements: small enough to balance the cores, large enough that handing one
// out costs nothing next to generating it.
constexpr int64_t kPieceElems = int64_t{1} << 20;

void add_pieces(std::vector<Piece>& pieces, char* dst, size_t elem_bytes, uint64_t key, int64_t begin, int64_t end) {
  for (int64_t b = begin; b < end; b += kPieceElems)
    pieces.push_back({dst + static_cast<size_t>(b - begin) * elem_bytes, key, b, std::min(end, b + kPieceElems)});
}

}  // namespace

void fill_random_host_blocks(const std::vector<RandomKvBlock>& blocks, DType dtype, int64_t n_rows, int64_t head_dim,
                             uint64_t seed) {
  const size_t elem_bytes = dtype_size(dtype);
  std::vector<Piece> pieces;
  for (const RandomKvBlock& b : blocks)
    add_pieces(pieces, static_cast<char*>(b.dst), elem_bytes, block_key(seed, b), 0, n_rows * head_dim);
  run_pieces(pieces, dtype);
}

void fill_random_device_block(Device& device, const RandomKvBlock& block, DType dtype, int64_t n_rows,
                              int64_t head_dim, uint64_t seed, std::vector<char>& staging) {
  const size_t elem_bytes = dtype_size(dtype);
  const int64_t total = n_rows * head_dim;
  const auto chunk = std::max<int64_t>(1, static_cast<int64_t>(staging.size() / elem_bytes));
  const uint64_t key = block_key(seed, block);
  for (int64_t begin = 0; begin < total; begin += chunk) {
    const int64_t end = std::min(total, begin + chunk);
    std::vector<Piece> pieces;
    add_pieces(pieces, staging.data(), elem_bytes, key, begin, end);
    run_pieces(pieces, dtype);
    device.write_from_host(static_cast<char*>(block.dst) + static_cast<size_t>(begin) * elem_bytes, staging.data(),
                           static_cast<size_t>(end - begin) * elem_bytes);
  }
}

}  // namespace headinfer
