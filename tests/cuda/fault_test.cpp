// Failures that lose nothing, on the GPU (issue 15): the device refusing each allocation an engine
// makes in turn (weights, activations, KV, the cuBLASLt and cuDNN workspaces: a bf16 checkpoint
// takes the cuDNN path), and pinned host memory refused part way through an offloaded, hybrid run.
// Each is one headinfer::Error of one line, and the device has every byte back once the engine is
// gone. Pinned memory is freed by the transfer (tests/kv/fault_test.cpp checks the same paths
// under ASan on the CPU backend).
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "fault_run.h"
#include "model_set.h"
#include "testdata.h"

namespace headinfer {
namespace {

using test::CudaTest;

TEST_F(CudaTest, OutOfMemoryAtEveryAllocationIsOneErrorAndLeaksNothing) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models/tiny/llama3-bf16");
  test::refuse_each_device_allocation(
      *ckpt, [](int64_t n) { return make_cuda_device({0, 0, n}); }, "out of GPU memory");
}

TEST_F(CudaTest, PinnedMemoryRefusedPartWayIsOneErrorAndLeaksNothing) {
  HEADINFER_REQUIRE_TESTDATA();
  auto ckpt = Checkpoint::open(test::testdata_dir() / "models/tiny/llama3-bf16");
  const ModelConfig& c = ckpt->config();
  const std::vector<int32_t> prompt = test::random_prompt(97, c.vocab_size, 6);
  const int64_t n_groups = c.n_layers * c.n_kv_heads;
  for (int64_t fail_after : {int64_t{0}, 3 * n_groups + 1, 8 * n_groups + 1}) {
    SCOPED_TRACE("fail after " + std::to_string(fail_after));
    auto device = make_cuda_device({0, 0, -1});
    int64_t prefilled = 0;
    try {
      Engine engine(*ckpt, *device, test::offloaded_run(97 + 40, true, fail_after));
      GenerateOptions go;
      go.max_new_tokens = 40;
      go.ignore_eos = true;
      GenerateCallbacks cb;
      cb.on_prefill_progress = [&](int64_t done, int64_t) { prefilled = done; };
      generate(engine, prompt, go, cb);
      ADD_FAILURE() << "the run finished although pinned allocations were refused";
    } catch (const Error& e) {
      test::expect_one_line_error(e.what(), "out of host memory");
    }
    if (fail_after == 3 * n_groups + 1) {
      EXPECT_GT(prefilled, 0) << "the fault should hit in the prefill";
    }
    EXPECT_EQ(device->bytes_in_use(), 0u);
  }
}

}  // namespace
}  // namespace headinfer
