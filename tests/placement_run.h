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

// The smallest --gpu-mem under which --offload auto keeps exactly `resident` groups (G = kv.kv_group)
// on the device next to its ring, found with the planner itself (a sliding-window layer's groups
// keep only their window, so group sizes differ); 0 when no cap gives exactly that many. fixed: the
// device bytes before any KV (weights, activations, tables), as make_planned_kv_cache sees them.
inline int64_t cap_for_resident(const ModelConfig& c, int64_t fixed, int64_t context, int64_t chunk, int64_t resident,
                                const KvPlacementOptions& kv) {
  PlannerInput in;
  in.config = c;
  in.context = context;
  in.chunk = chunk;
  in.kv_elem_bytes = static_cast<int64_t>(dtype_size(kv.kv_dtype.value_or(DType::F32)));
  in.weight_bytes = fixed;
  in.activation_bytes = 0;
  in.offload = OffloadMode::Auto;
  in.kv_group = kv.kv_group;
  in.host_slab_positions = kv.host_slab_positions;
  in.window_kv = kv.window_kv;
  in.hybrid = kv.hybrid;
  in.cpu_groups = 0;  // which groups the CPU attends takes no device memory
  auto resident_at = [&](int64_t cap) {
    in.gpu_mem = cap;
    return make_plan(in).n_resident_groups;
  };
  int64_t lo = fixed, hi = fixed + 4 * c.kv_bytes_per_token(in.kv_elem_bytes) * context + (int64_t{1} << 20);
  while (lo < hi) {  // the resident count grows with the cap
    const int64_t mid = lo + (hi - lo) / 2;
    if (resident_at(mid) >= resident) hi = mid;
    else lo = mid + 1;
  }
  return resident_at(lo) == resident ? lo : 0;
}

// (resident, --gpu-mem) for each distinct resident >= 1 that some cap gives (cap_for_resident).
inline std::vector<std::pair<int64_t, int64_t>> resident_caps(const ModelConfig& c, int64_t fixed, int64_t context,
                                                              int64_t chunk, std::vector<int64_t> residents,
                                                              const KvPlacementOptions& kv) {
  std::sort(residents.begin(), residents.end());
  residents.erase(std::unique(residents.begin(), residents.end()), residents.end());
  std::vector<std::pair<int64_t, int64_t>> caps;
  for (int64_t r : residents)
    if (const int64_t cap = r >= 1 ? cap_for_resident(c, fixed, context, chunk, r, kv) : 0; cap > 0)
      caps.emplace_back(r, cap);
  return caps;
}

inline void expect_bit_identical(const PlacementRun& ref, const PlacementRun& got, const std::string& what) {
  ASSERT_EQ(ref.logits.size(), got.logits.size()) << what;
  EXPECT_EQ(ref.tokens, got.tokens) << what;
  EXPECT_EQ(0, std::memcmp(ref.logits.data(), got.logits.data(), ref.logits.size() * sizeof(float)))
      << what << ": logits differ in their bits";
}

}  // namespace headinfer::test
