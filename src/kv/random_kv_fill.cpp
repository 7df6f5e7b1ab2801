#include "random_kv_fill.h"

#include <algorithm>
#include <atomic>
#include <bit>
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

// Element i in [-1, 1): 24 random bits (exact in f32, so every dtype rounds the same f32 value).
// One hash serves elements 2j (high bits) and 2j + 1: the hash is most of the cost of tens of GiB.
float element(uint64_t key, int64_t i) {
  const uint64_t r = splitmix64(key ^ static_cast<uint64_t>(i >> 1));
  const uint64_t bits24 = (i & 1) != 0 ? (r >> 16) & 0xffffffu : r >> 40;
  return static_cast<float>(bits24) * (2.0f / 16777216.0f) - 1.0f;
}

// Elements [begin, end) of a block (element i = row * head_dim + channel) into dst[0 ..), as T.
template <typename T, typename Narrow>
void fill_typed(T* dst, uint64_t key, int64_t begin, int64_t end) {
  int64_t i = begin;
  if ((i & 1) != 0 && i < end) dst[i - begin] = Narrow()(element(key, i)), ++i;
  for (; i + 1 < end; i += 2) {  // pairs, one hash each
    const uint64_t r = splitmix64(key ^ static_cast<uint64_t>(i >> 1));
    dst[i - begin] = Narrow()(static_cast<float>(r >> 40) * (2.0f / 16777216.0f) - 1.0f);
    dst[i + 1 - begin] = Narrow()(static_cast<float>((r >> 16) & 0xffffffu) * (2.0f / 16777216.0f) - 1.0f);
  }
  if (i < end) dst[i - begin] = Narrow()(element(key, i));
}

// Function objects rather than function pointers, so the narrowing inlines into the pair loop.
struct KeepF32 {
  float operator()(float x) const { return x; }
};
// f32_to_bf16 without its NaN branch (these values are finite): the same round-to-nearest-even.
struct ToBF16 {
  uint16_t operator()(float x) const {
    const auto bits = std::bit_cast<uint32_t>(x);
    return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
};
struct ToF16 {
  uint16_t operator()(float x) const { return f32_to_f16(x); }
};

void fill_range(void* dst, DType dtype, uint64_t key, int64_t begin, int64_t end) {
  switch (dtype) {
    case DType::F32: fill_typed<float, KeepF32>(static_cast<float*>(dst), key, begin, end); break;
    case DType::BF16: fill_typed<uint16_t, ToBF16>(static_cast<uint16_t*>(dst), key, begin, end); break;
    case DType::F16: fill_typed<uint16_t, ToF16>(static_cast<uint16_t*>(dst), key, begin, end); break;
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

void fill_random_host_blocks(const std::vector<RandomKvBlock>& blocks, DType dtype, int64_t head_dim, uint64_t seed) {
  const size_t elem_bytes = dtype_size(dtype);
  std::vector<Piece> pieces;
  for (const RandomKvBlock& b : blocks)
    add_pieces(pieces, static_cast<char*>(b.dst), elem_bytes, block_key(seed, b), b.row0 * head_dim,
               (b.row0 + b.n_rows) * head_dim);
  run_pieces(pieces, dtype);
}

void fill_random_device_block(Device& device, const RandomKvBlock& block, DType dtype, int64_t n_rows,
                              int64_t head_dim, uint64_t seed, std::vector<char>& staging) {
  const size_t elem_bytes = dtype_size(dtype);
  const int64_t total = n_rows * head_dim, first = block.row0 * head_dim;
  const auto chunk = std::max<int64_t>(1, static_cast<int64_t>(staging.size() / elem_bytes));
  const uint64_t key = block_key(seed, block);
  for (int64_t begin = 0; begin < total; begin += chunk) {
    const int64_t end = std::min(total, begin + chunk);
    std::vector<Piece> pieces;
    add_pieces(pieces, staging.data(), elem_bytes, key, first + begin, first + end);
    run_pieces(pieces, dtype);
    device.write_from_host(static_cast<char*>(block.dst) + static_cast<size_t>(begin) * elem_bytes, staging.data(),
                           static_cast<size_t>(end - begin) * elem_bytes);
  }
}

}  // namespace headinfer
