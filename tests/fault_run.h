#pragma once
// What the fault tests share (tests/kv/fault_test.cpp on the CPU, tests/cuda/fault_test.cpp on the
// GPU): the engine options of an offloaded run that grows its host tier often, and the check of
// the error it ends with.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "headinfer/backend.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"

namespace headinfer::test {

// Every head block on the host in slabs of 16 positions (an allocation every 16 positions per
// group), prefill chunks of 17; `hybrid`: one group attended on the CPU in decode (2 threads), so
// host attention runs when a fault hits. host_alloc_fail_after: see TransferOptions.
inline EngineOptions offloaded_run(int64_t context, bool hybrid, int64_t host_alloc_fail_after) {
  EngineOptions eo;
  eo.context = context;
  eo.chunk = 17;
  eo.kv.offload = OffloadMode::All;
  eo.kv.kv_group = 1;
  eo.kv.host_slab_positions = 16;
  eo.kv.host_alloc_fail_after = host_alloc_fail_after;
  if (hybrid) {
    eo.kv.hybrid = HybridMode::Auto;
    eo.kv.cpu_groups = 1;
    eo.kv.host_threads = 2;
  }
  return eo;
}

// One line, naming what ran out.
inline void expect_one_line_error(const std::string& message, const std::string& needle) {
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_NE(message.find(needle), std::string::npos) << message;
}

// Loads `ckpt` on make_device(n) and runs a short offloaded hybrid prefill and decode, for n = 0, 1,
// ... (the device refusing its allocations after the first n) until the run succeeds. Each refused
// run must end in one error line naming `needle` and leave the device with nothing allocated.
// Returns the number of allocations the whole run made (every one of them was refused once).
template <typename MakeDevice>
int64_t refuse_each_device_allocation(const Checkpoint& ckpt, MakeDevice&& make_device, const std::string& needle) {
  std::vector<int32_t> prompt(23);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % ckpt.config().vocab_size);
  constexpr int64_t kLimit = 2000;
  int64_t fail_after = 0;
  for (; fail_after < kLimit; ++fail_after) {
    std::unique_ptr<Device> device = make_device(fail_after);
    try {
      Engine engine(ckpt, *device, offloaded_run(40, true, -1));
      engine.prefill(prompt);
      engine.decode(1);
      break;  // every allocation the run needs was granted
    } catch (const Error& e) {
      expect_one_line_error(e.what(), needle);
    }
    EXPECT_EQ(device->bytes_in_use(), 0u) << "leak after refusing allocation " << fail_after;
    if (device->bytes_in_use() != 0) break;
  }
  std::printf("[faults] the run made %lld device allocations; each one was refused in turn\n",
              static_cast<long long>(fail_after));
  EXPECT_GT(fail_after, 10) << "an engine makes more allocations than that: was the injection tested at all?";
  EXPECT_LT(fail_after, kLimit);
  return fail_after;
}

}  // namespace headinfer::test
