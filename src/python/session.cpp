#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <sstream>

#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <nlohmann/json.hpp>

#include "headinfer/error.h"
#include "headinfer/head_store.h"
#include "py_session.h"

namespace headinfer::python {
namespace {

// Option strings are parsed by the CLI's parsers; their Error becomes a ValueError.
template <class Fn>
auto parsed(Fn&& fn) {
  try {
    return fn();
  } catch (const Error& e) {
    throw nb::value_error(e.what());
  }
}

DType dlpack_dtype(const nb::dlpack::dtype& t, const std::string& name) {
  if (t.lanes == 1 && t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && t.bits == 32) return DType::F32;
  if (t.lanes == 1 && t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && t.bits == 16) return DType::F16;
  if (t.lanes == 1 && t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat) && t.bits == 16) return DType::BF16;
  throw nb::type_error(("tensor '" + name + "': dtype is not float32, float16 or bfloat16").c_str());
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

PyOptions::PyOptions(const std::string& device_kind, int threads, const std::optional<std::string>& gpu_mem,
                     const std::optional<std::string>& host_mem_text, const std::string& offload_text,
                     int64_t kv_group_count, const std::string& hybrid_text, std::optional<int64_t> chunk_tokens,
                     const std::optional<std::string>& ctx_text) {
  parsed([&] {
    device.kind = device_kind;
    resolve_device_kind(device);  // an unknown kind, or cuda without CUDA, fails here
    if (threads < 0) throw Error("threads must be >= 0 (0: every core)");
    device.threads = threads;
    gpu_mem_given = gpu_mem.has_value();
    device.gpu_mem = gpu_mem ? parse_byte_size(*gpu_mem, "gpu_mem") : 0;
    host_mem = host_mem_text ? parse_byte_size(*host_mem_text, "host_mem") : 0;
    offload = parse_offload_mode(offload_text, "offload");
    if (kv_group_count < 0) throw Error("kv_group must be >= 0 (0: the planner picks)");
    kv_group = kv_group_count;
    hybrid = parse_hybrid_mode(hybrid_text, "hybrid");
    if (chunk_tokens && *chunk_tokens < 1) throw Error("chunk must be at least 1");
    chunk = chunk_tokens;
    if (ctx_text) ctx = parse_count(*ctx_text, "ctx");
    if (ctx && *ctx < 1) throw Error("ctx must be at least 1");
    return 0;
  });
}

PyDevice::PyDevice(const PyOptions& o) : kind(resolve_device_kind(o.device)), device(make_device(o.device)) {}

PyCheckpoint open_checkpoint(const std::string& dir) {
  PyCheckpoint c;
  c.checkpoint = Checkpoint::open(dir);
  c.config_json = read_text((std::filesystem::path(dir) / "config.json").string());
  return c;
}

PyCheckpoint memory_checkpoint(const std::string& config_json, const std::string& generation_config_json,
                               const std::vector<std::string>& names, const std::vector<nb::ndarray<nb::ro>>& arrays,
                               const PyDevice& device, const std::string& origin) {
  if (names.size() != arrays.size()) throw nb::value_error("names and arrays differ in length");
  const bool cuda = device.kind == "cuda";
  PyCheckpoint c;
  c.config_json = config_json;
  c.arrays = arrays;
  std::vector<TensorView> views;
  std::set<const void*> in_place;  // tied embeddings: one storage under two names
  for (size_t i = 0; i < arrays.size(); ++i) {
    const nb::ndarray<nb::ro>& a = arrays[i];
    TensorView v;
    v.name = names[i];
    v.dtype = dlpack_dtype(a.dtype(), v.name);
    int64_t expected_stride = 1;
    for (size_t d = a.ndim(); d-- > 0;) {
      v.shape.insert(v.shape.begin(), static_cast<int64_t>(a.shape(d)));
      if (a.shape(d) != 1 && a.stride(d) != expected_stride)
        throw nb::value_error(("tensor '" + v.name + "' is not contiguous (pass tensor.contiguous())").c_str());
      expected_stride *= static_cast<int64_t>(a.shape(d));
    }
    v.data = a.data();
    v.nbytes = a.nbytes();
    const bool on_cpu = a.device_type() == nb::device::cpu::value;
    const bool on_gpu = a.device_type() == nb::device::cuda::value;
    if (on_gpu && !cuda)
      throw nb::value_error(("tensor '" + v.name + "' is on a GPU but the engine runs on the CPU (move the model "
                             "with model.cpu(), or use device='cuda')").c_str());
    if (on_gpu && a.device_id() != 0)
      throw nb::value_error(("tensor '" + v.name + "' is on cuda:" + std::to_string(a.device_id()) +
                             "; headinfer runs on cuda:0").c_str());
    if (!on_cpu && !on_gpu)
      throw nb::value_error(("tensor '" + v.name + "': memory of DLPack device type " +
                             std::to_string(a.device_type()) + " (only CPU and CUDA memory)").c_str());
    // On the CPU device host memory is the device's memory; on CUDA only GPU memory is.
    v.on_device = cuda ? on_gpu : on_cpu;
    if (v.on_device && in_place.insert(v.data).second) c.in_place_bytes += static_cast<int64_t>(v.nbytes);
    views.push_back(std::move(v));
  }
  nlohmann::json config, generation;
  try {
    config = nlohmann::json::parse(config_json);
    if (!generation_config_json.empty()) generation = nlohmann::json::parse(generation_config_json);
  } catch (const nlohmann::json::exception& e) {
    throw nb::value_error((origin + ": config is not valid JSON (" + e.what() + ")").c_str());
  }
  c.checkpoint = Checkpoint::from_memory(config, generation, std::move(views), origin);
  return c;
}

std::string plan_json(const std::string& config_json, const std::string& source, const PyOptions& o,
                      int64_t context, int64_t gpu_mem) {
  PlanRequest r;
  try {
    r.config = nlohmann::json::parse(config_json);
  } catch (const nlohmann::json::exception& e) {
    throw nb::value_error((source + ": config is not valid JSON (" + e.what() + ")").c_str());
  }
  r.source = source;
  r.device = o.device;
  r.context = context;
  r.gpu_mem = gpu_mem;
  r.host_mem = o.host_mem;
  r.hybrid = o.hybrid;
  r.offload = o.offload;
  r.kv_group = o.kv_group;
  if (o.chunk) r.chunk = *o.chunk;
  return plan_report_json(plan_placement(r)).dump();
}

PySession::PySession(PyCheckpoint& checkpoint, PyDevice& d, const PyOptions& o, int64_t context, int64_t prompt_tokens)
    : device(d) {
  EngineOptions eo;
  eo.context = context;
  eo.prompt_tokens = prompt_tokens;  // the first chunk's attention plans are built while the weights copy
  if (o.chunk) eo.chunk = *o.chunk;
  // The device's budget is the cap the planner plans against, as in the CLI. Without gpu_mem a
  // CUDA device's budget is the free memory, which the weights used in place have already left.
  eo.kv.gpu_mem = static_cast<int64_t>(device.device->memory_budget());
  if (eo.kv.gpu_mem > 0 && !o.gpu_mem_given) eo.kv.gpu_mem += checkpoint.in_place_bytes;
  eo.kv.host_mem = o.host_mem;
  eo.kv.offload = o.offload;
  eo.kv.kv_group = o.kv_group;
  eo.kv.hybrid = o.hybrid;
  nb::gil_scoped_release release;
  engine = std::make_unique<Engine>(*checkpoint.checkpoint, *device.device, eo);
}

nb::tuple PySession::generate(const std::vector<int64_t>& prompt_ids, const PyGenerateArgs& args) {
  const ModelConfig& c = engine->config();
  std::vector<int32_t> prompt;
  for (int64_t id : prompt_ids) {
    if (id < 0 || id >= c.vocab_size)
      throw nb::value_error(("input_ids: token id " + std::to_string(id) + " is outside the vocabulary (" +
                             std::to_string(c.vocab_size) + " tokens)").c_str());
    prompt.push_back(static_cast<int32_t>(id));
  }
  GenerateOptions go;
  go.max_new_tokens = args.max_new_tokens;
  go.sampling = args.sampling;
  if (args.eos_ids) {
    go.eos_ids = *args.eos_ids;
    // An explicit empty list means: no stop id (the core reads empty as "the config's").
    if (go.eos_ids.empty()) go.ignore_eos = true;
  }
  std::vector<float> logits;  // [tokens, vocab]
  GenerateCallbacks cb;
  // Every callback takes the GIL back and checks for Ctrl-C: a KeyboardInterrupt (or an error in
  // the caller's streamer) unwinds through the engine as nb::python_error; the next call resets.
  cb.on_token = [&](int32_t id) {
    nb::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw nb::python_error();
    if (args.on_token.is_valid() && !args.on_token.is_none()) args.on_token(id);
  };
  cb.on_prefill_progress = [&](int64_t done, int64_t total) {
    nb::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw nb::python_error();
    if (args.on_progress.is_valid() && !args.on_progress.is_none()) args.on_progress(done, total);
  };
  if (args.want_logits) cb.on_logits = [&](std::span<const float> l) { logits.insert(logits.end(), l.begin(), l.end()); };
  GenerateResult r;
  {
    nb::gil_scoped_release release;
    engine->reset();
    r = headinfer::generate(*engine, prompt, go, cb);
  }
  nb::object logits_out = nb::none();
  if (args.want_logits) {
    auto* data = new std::vector<float>(std::move(logits));
    nb::capsule owner(data, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    const size_t vocab = static_cast<size_t>(c.vocab_size);
    logits_out = nb::cast(nb::ndarray<nb::numpy, float, nb::ndim<2>>(data->data(), {data->size() / vocab, vocab}, owner));
  }
  nb::dict stats;
  stats["prompt_tokens"] = r.prompt_tokens;
  stats["prefill_seconds"] = r.prefill_seconds;
  stats["decode_seconds"] = r.decode_seconds;
  stats["decode_tokens_per_second"] = r.decode_tokens_per_second();
  stats["stopped_at_eos"] = r.stopped_at_eos;
  stats["stopped_at_context"] = r.stopped_at_context;
  stats["context"] = engine->context();
  stats["device"] = device.device->name();
  stats["device_peak_bytes"] = device.device->peak_bytes();
  stats["weight_bytes"] = engine->model().weight_bytes();
  stats["weights_in_place_bytes"] = engine->model().weights_in_place_bytes();
  return nb::make_tuple(nb::cast(r.tokens), logits_out, stats);
}

nb::dict PySession::placement() const {
  nb::dict d;
  d["context"] = engine->context();
  d["device"] = device.device->name();
  d["device_bytes_in_use"] = device.device->bytes_in_use();
  d["weight_bytes"] = engine->model().weight_bytes();
  d["weights_in_place_bytes"] = engine->model().weights_in_place_bytes();
  if (const Plan* p = kv_cache_plan(engine->kv_cache())) {
    d["n_resident_groups"] = p->n_resident_groups;
    d["n_streamed_groups"] = p->n_streamed_groups;
    d["n_cpu_groups"] = p->n_cpu_groups;
    d["group_size"] = p->group_size;
    d["chunk"] = p->chunk;
    d["gpu_bytes_total"] = p->gpu_bytes_total;
  }
  return d;
}

}  // namespace headinfer::python
