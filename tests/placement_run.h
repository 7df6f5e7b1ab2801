#pragma once
// The engine's loop on Model + the planned KV cache directly (so a test sees the plan), as every
// placement test runs it: the prompt in chunks, then greedy decode steps, every logit kept.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "headinfer/checkpoint.h"
#include "headinfer/head_store.h"
#include "headinfer/model.h"

namespace headinfer::test {

struct PlacementRun {
  std::vector<float> logits;    // [1 + n_decode, vocab]: after the prompt, then after each decode step
  std::vector<int32_t> tokens;  // greedy picks
  Plan plan;
  size_t device_peak = 0;
};

// On `device` (whose budget kv.gpu_mem should be); the cache is freed before the peak is read.
inline PlacementRun run_placement_on(Device& device, const Checkpoint& ckpt, const std::vector<int32_t>& prompt,
                                     int64_t chunk, int64_t n_decode, const KvPlacementOptions& kv) {
  const ModelConfig& c = ckpt.config();
  const int64_t context = static_cast<int64_t>(prompt.size()) + n_decode;
  PlacementRun r;
  {
    Model model(ckpt, device, {std::min(chunk, context), 512});
    auto cache = make_planned_kv_cache(device, c, context, chunk, static_cast<int64_t>(model.weight_bytes()), kv);
    r.plan = *kv_cache_plan(*cache);
    std::vector<float> logits(static_cast<size_t>(c.vocab_size));
    auto keep = [&] {
      r.logits.insert(r.logits.end(), logits.begin(), logits.end());
      r.tokens.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    };
    int64_t pos = 0;
    const auto n_prompt = static_cast<int64_t>(prompt.size());
    while (pos < n_prompt) {
      const int64_t n = std::min(model.max_chunk(), n_prompt - pos);
      model.forward(std::span<const int32_t>(prompt).subspan(static_cast<size_t>(pos), static_cast<size_t>(n)), pos,
                    *cache, logits, n_prompt);  // one call for longrope's choice, as Engine::prefill
      pos += n;
    }
    keep();
    for (int64_t i = 0; i < n_decode; ++i, ++pos) {
      const int32_t id = r.tokens.back();
      model.forward(std::span<const int32_t>(&id, 1), pos, *cache, logits);
      keep();
    }
  }
  r.device_peak = device.peak_bytes();
  return r;
}

// On a CPU device capped at kv.gpu_mem (0: unlimited), whose peak must stay under the cap.
inline PlacementRun run_placement(const Checkpoint& ckpt, const std::vector<int32_t>& prompt, int64_t chunk,
                                  int64_t n_decode, const KvPlacementOptions& kv) {
  auto device = make_cpu_device({2, static_cast<size_t>(kv.gpu_mem)});
  PlacementRun r = run_placement_on(*device, ckpt, prompt, chunk, n_decode, kv);
  if (kv.gpu_mem > 0) {
    EXPECT_LE(r.device_peak, static_cast<size_t>(kv.gpu_mem)) << "device pool over the cap";
  }
  return r;
}

// --offload auto caps with G = 1 that leave `resident` head blocks on the device next to a ring of
// 2 slots (fewer when fewer blocks stream): (resident, --gpu-mem) for each distinct resident >= 1.
// fixed: the device bytes before any KV; block: one head block's K + V bytes.
inline std::vector<std::pair<int64_t, int64_t>> resident_caps(int64_t fixed, int64_t block, int64_t n_blocks,
                                                              std::vector<int64_t> residents) {
  std::sort(residents.begin(), residents.end());
  residents.erase(std::unique(residents.begin(), residents.end()), residents.end());
  std::vector<std::pair<int64_t, int64_t>> caps;
  for (int64_t r : residents)
    if (r >= 1) caps.emplace_back(r, fixed + (r + std::min<int64_t>(2, n_blocks - r)) * block);
  return caps;
}

inline void expect_bit_identical(const PlacementRun& ref, const PlacementRun& got, const std::string& what) {
  ASSERT_EQ(ref.logits.size(), got.logits.size()) << what;
  EXPECT_EQ(ref.tokens, got.tokens) << what;
  EXPECT_EQ(0, std::memcmp(ref.logits.data(), got.logits.data(), ref.logits.size() * sizeof(float)))
      << what << ": logits differ in their bits";
}

}  // namespace headinfer::test
