// Failures that lose nothing (issue 15), on the CPU backend with injected faults: host (pinned)
// allocations refused part way through a run, the host tier outgrowing its budget, and the device
// running out of memory at every allocation an engine makes. Each ends in one headinfer::Error of
// one line, and every byte the device handed out comes back (the device outlives the engine and
// counts its live blocks); ASan (.ci/run) checks the host tier's blocks and use after free when a
// run unwinds with copies in flight.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/head_store.h"
#include "headinfer/random_model.h"
#include "headinfer/transfer.h"
#include "fault_run.h"
#include "model_set.h"

namespace headinfer {
namespace {

std::unique_ptr<Checkpoint> tiny_model() { return Checkpoint::random(builtin_shape_config("tiny"), DType::F32, 15); }

// A generate whose host tier is refused its n-th allocation: before the first token for small n,
// in the middle of the prefill or of the decode for larger ones. The error names host memory and
// the run it ended; the device gets every byte back when the engine goes.
TEST(Faults, HostAllocationRefusedPartWayThroughARun) {
  const auto ckpt = tiny_model();
  const ModelConfig& c = ckpt->config();
  const std::vector<int32_t> prompt = test::random_prompt(97, c.vocab_size, 3);
  constexpr int64_t kNew = 40;
  const int64_t n_groups = c.n_layers * c.n_kv_heads;  // kv_group 1: one host-tier group per head
  for (bool hybrid : {false, true}) {
    // A run that succeeds allocates (97 + 40) / 16 rounded up = 9 slabs per group, plus the
    // host attention buffers in hybrid: refuse the first, one in the first slab row, the fourth
    // row (mid-prefill), and the ninth (mid-decode).
    for (int64_t fail_after : {int64_t{0}, n_groups / 2, 3 * n_groups + 1, 8 * n_groups + 1}) {
      SCOPED_TRACE("hybrid " + std::to_string(hybrid) + ", fail after " + std::to_string(fail_after));
      auto device = make_cpu_device({2, 0});
      int64_t prefilled = 0, decoded = 0;
      try {
        EngineOptions eo = test::offloaded_run(static_cast<int64_t>(prompt.size()) + kNew, hybrid, fail_after);
        eo.kv.copy_jitter_us = 20;  // copies land late: the fault hits with copies in flight
        Engine engine(*ckpt, *device, eo);
        GenerateOptions go;
        go.max_new_tokens = kNew;
        go.ignore_eos = true;
        GenerateCallbacks cb;
        cb.on_prefill_progress = [&](int64_t done, int64_t) { prefilled = done; };
        cb.on_token = [&](int32_t) { ++decoded; };
        generate(engine, prompt, go, cb);
        ADD_FAILURE() << "the run finished although host allocations were refused";
      } catch (const Error& e) {
        test::expect_one_line_error(e.what(), "out of host memory");
      }
      if (fail_after == 3 * n_groups + 1) {
        EXPECT_GT(prefilled, 0) << "the fault should hit in the middle of the prefill";
        EXPECT_LT(prefilled, static_cast<int64_t>(prompt.size()));
      }
      if (fail_after == 8 * n_groups + 1) {
        EXPECT_GT(decoded, 0) << "the fault should hit in the middle of the decode";
      }
      EXPECT_EQ(device->bytes_in_use(), 0u) << "device memory leaked by the failed run";
    }
  }
}

// The device (the GPU's stand-in) refuses its n-th allocation, for every n an engine reaches
// while it loads and runs: one error each, and nothing left allocated.
TEST(Faults, DeviceOutOfMemoryAtEveryAllocation) {
  const auto ckpt = tiny_model();
  test::refuse_each_device_allocation(
      *ckpt, [](int64_t n) { return make_cpu_device({1, 0, n}); }, "out of device memory");
}

// A host tier whose budget is smaller than what its group reaches (the plan normally prevents
// it): the slab that would pass the budget is refused with the --host-mem hint, and the slabs
// already held stay usable and are freed with the store.
TEST(Faults, HostTierOutgrowsItsBudget) {
  const auto ckpt = tiny_model();
  const ModelConfig& c = ckpt->config();
  PlannerInput in;
  in.config = c;
  in.context = 100;
  in.kv_elem_bytes = 4;
  in.offload = OffloadMode::All;
  in.kv_group = c.n_kv_heads;
  in.host_slab_positions = 32;
  const Plan plan = make_plan(in);
  ASSERT_TRUE(plan.fits) << plan.message;
  const size_t slab_bytes = static_cast<size_t>(plan.host_slab_bytes);
  auto device = make_cpu_device({1, 0});
  CpuTransferOptions to;
  to.host_budget = 2 * slab_bytes + slab_bytes / 2;  // two slabs and a half: the third is refused
  auto transfer = make_cpu_transfer(to);
  {
    HeadStore store(*device, *transfer, c, plan, DType::F32);
    store.reserve(0, 0, 64);
    EXPECT_EQ(transfer->host_bytes_in_use(), 2 * slab_bytes);
    try {
      store.reserve(0, 0, 65);
      ADD_FAILURE() << "the third slab passed the budget";
    } catch (const Error& e) {
      test::expect_one_line_error(e.what(), "raise --host-mem");
    }
    EXPECT_EQ(transfer->host_bytes_in_use(), 2 * slab_bytes) << "the refused slab is not counted";
    EXPECT_EQ(store.reserved(0, 0), 64);
  }
  EXPECT_EQ(transfer->host_bytes_in_use(), 0u) << "the store frees its slabs";
}

}  // namespace
}  // namespace headinfer
