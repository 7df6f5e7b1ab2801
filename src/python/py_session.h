#pragma once
// The objects the Python face holds: parsed options, the device, a checkpoint (a folder or the
// caller's tensors, kept alive here), and an engine with generate(). Shared by bindings.cpp
// (the module) and session.cpp (their code).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "headinfer/backend.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/options.h"
#include "headinfer/plan_report.h"
#include "headinfer/planner.h"

namespace headinfer::python {

namespace nb = nanobind;

// HeadInferModel's keyword options, parsed by the CLI's parsers (a bad value is a ValueError
// naming the option, before anything loads). Unset optionals keep the engine's defaults.
struct PyOptions {
  DeviceChoice device;            // kind, threads, gpu_mem (0: CPU unlimited, CUDA the free memory)
  bool gpu_mem_given = false;
  int64_t host_mem = 0;           // 0: detected
  OffloadMode offload = OffloadMode::Auto;
  int64_t kv_group = 0;
  HybridMode hybrid = HybridMode::Off;
  std::optional<int64_t> chunk;   // prefill tokens per forward; unset: the engine's default
  std::optional<int64_t> ctx;     // context to reserve; unset: prompt + new tokens per call

  PyOptions(const std::string& device, int threads, const std::optional<std::string>& gpu_mem,
            const std::optional<std::string>& host_mem, const std::string& offload, int64_t kv_group,
            const std::string& hybrid, std::optional<int64_t> chunk, const std::optional<std::string>& ctx);
};

// The device the engine runs on, made once per HeadInferModel (its budget is the gpu_mem option).
struct PyDevice {
  explicit PyDevice(const PyOptions& options);
  std::string kind;  // "cpu" | "cuda"
  std::unique_ptr<Device> device;
};

// A checkpoint and what keeps its memory alive: a folder's mappings, or the caller's arrays.
struct PyCheckpoint {
  std::unique_ptr<Checkpoint> checkpoint;
  std::vector<nb::ndarray<nb::ro>> arrays;  // from_memory: the tensors the views point into
  std::string config_json;                  // config.json's text (plan())
  int64_t in_place_bytes = 0;               // distinct bytes of tensors on the engine's device
};

// Opens a checkpoint folder with the C++ loader.
PyCheckpoint open_checkpoint(const std::string& dir);
// A checkpoint over DLPack arrays (torch tensors, numpy arrays): row-major contiguous, f32, f16
// or bf16. Arrays on `device`'s memory are used in place (CPU arrays on the CPU device, GPU 0
// arrays on the CUDA device); CPU arrays are uploaded to a CUDA device; anything else is an error.
PyCheckpoint memory_checkpoint(const std::string& config_json, const std::string& generation_config_json,
                               const std::vector<std::string>& names, const std::vector<nb::ndarray<nb::ro>>& arrays,
                               const PyDevice& device, const std::string& origin);

// The planner's report for a checkpoint's config under these options, as headinfer plan --json.
std::string plan_json(const std::string& config_json, const std::string& source, const PyOptions& options,
                      int64_t context, int64_t gpu_mem);

struct PyGenerateArgs {
  int64_t max_new_tokens = 0;
  SamplerOptions sampling;
  std::optional<std::vector<int64_t>> eos_ids;  // unset: the checkpoint's generation config
  bool want_logits = false;
  nb::object on_token;     // callable(id) or None, called with the GIL held
  nb::object on_progress;  // callable(done, total) or None
};

// An engine reserved for `context` positions on the model's device.
struct PySession {
  PySession(PyCheckpoint& checkpoint, PyDevice& device, const PyOptions& options, int64_t context,
            int64_t prompt_tokens = 0);
  int64_t context() const { return engine->context(); }
  // Runs from an empty context with the GIL released: (tokens, logits [n, vocab] or None, stats).
  nb::tuple generate(const std::vector<int64_t>& prompt, const PyGenerateArgs& args);
  nb::dict placement() const;  // the plan the engine runs (resident/streamed groups, bytes)

  PyDevice& device;
  std::unique_ptr<Engine> engine;
};

}  // namespace headinfer::python
