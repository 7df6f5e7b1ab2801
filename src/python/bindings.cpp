// headinfer._core: the Python face's bindings (nanobind). The Python layer (python/headinfer)
// turns transformers-style arguments into these calls; everything else is the C++ core.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "headinfer/error.h"
#include "py_session.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace headinfer::python {
namespace {

// headinfer.HeadInferError: the engine's one-line message. Both a RuntimeError (the engine
// failed) and a ValueError (most failures are input it rejects: a config, a size that does not fit).
void register_error(nb::module_& m) {
  nb::object bases = nb::make_tuple(nb::handle(PyExc_RuntimeError), nb::handle(PyExc_ValueError));
  PyObject* type = PyErr_NewException("headinfer.HeadInferError", bases.ptr(), nullptr);
  if (type == nullptr) throw nb::python_error();
  m.attr("HeadInferError") = nb::steal(type);
  nb::register_exception_translator(
      [](const std::exception_ptr& p, void* payload) {
        try {
          std::rethrow_exception(p);
        } catch (const Error& e) {
          PyErr_SetString(static_cast<PyObject*>(payload), e.what());
        }
      },
      type);
}

}  // namespace
}  // namespace headinfer::python

NB_MODULE(_core, m) {
  using namespace headinfer::python;
  m.doc() = "headinfer's C++ engine (use headinfer.HeadInferModel)";
  register_error(m);
  m.def("built_with_cuda", &headinfer::built_with_cuda);

  nb::class_<PyOptions>(m, "Options")
      .def(nb::init<const std::string&, int, const std::optional<std::string>&, const std::optional<std::string>&,
                    const std::string&, int64_t, const std::string&, std::optional<int64_t>,
                    const std::optional<std::string>&>(),
           "device"_a, "threads"_a, "gpu_mem"_a.none(), "host_mem"_a.none(), "offload"_a, "kv_group"_a, "hybrid"_a,
           "chunk"_a.none(), "ctx"_a.none())
      .def_prop_ro("ctx", [](const PyOptions& o) { return o.ctx; })
      .def_prop_ro("gpu_mem_given", [](const PyOptions& o) { return o.gpu_mem_given; })
      .def_prop_ro("gpu_mem", [](const PyOptions& o) { return o.device.gpu_mem; });

  nb::class_<PyDevice>(m, "Device")
      .def(nb::init<const PyOptions&>(), "options"_a)
      .def_ro("kind", &PyDevice::kind)
      .def_prop_ro("name", [](const PyDevice& d) { return d.device->name(); })
      .def_prop_ro("memory_budget", [](const PyDevice& d) { return d.device->memory_budget(); })
      .def_prop_ro("peak_bytes", [](const PyDevice& d) { return d.device->peak_bytes(); })
      .def_prop_ro("bytes_in_use", [](const PyDevice& d) { return d.device->bytes_in_use(); });

  nb::class_<PyCheckpoint>(m, "Checkpoint")
      .def_static("open", &open_checkpoint, "dir"_a, nb::call_guard<nb::gil_scoped_release>())
      .def_static("from_memory", &memory_checkpoint, "config_json"_a, "generation_config_json"_a, "names"_a,
                  "arrays"_a, "device"_a, "origin"_a)
      .def_ro("config_json", &PyCheckpoint::config_json)
      .def_ro("in_place_bytes", &PyCheckpoint::in_place_bytes)
      .def_prop_ro("vocab_size", [](const PyCheckpoint& c) { return c.checkpoint->config().vocab_size; })
      .def_prop_ro("max_position_embeddings",
                   [](const PyCheckpoint& c) { return c.checkpoint->config().max_position_embeddings; })
      .def_prop_ro("eos_token_ids", [](const PyCheckpoint& c) { return c.checkpoint->config().eos_token_ids; });

  nb::class_<PySession>(m, "Engine")
      .def(nb::init<PyCheckpoint&, PyDevice&, const PyOptions&, int64_t, int64_t>(), "checkpoint"_a, "device"_a,
           "options"_a, "context"_a, "prompt_tokens"_a = 0, nb::keep_alive<1, 2>(), nb::keep_alive<1, 3>())
      .def_prop_ro("context", &PySession::context)
      .def("placement", &PySession::placement)
      .def(
          "generate",
          [](PySession& s, const std::vector<int64_t>& prompt, int64_t max_new_tokens, float temperature,
             int64_t top_k, float top_p, uint64_t seed, std::optional<std::vector<int64_t>> eos_ids,
             bool want_logits, nb::object on_token, nb::object on_progress) {
            PyGenerateArgs a;
            a.max_new_tokens = max_new_tokens;
            a.sampling = {temperature, top_k, top_p, seed};
            a.eos_ids = std::move(eos_ids);
            a.want_logits = want_logits;
            a.on_token = std::move(on_token);
            a.on_progress = std::move(on_progress);
            return s.generate(prompt, a);
          },
          "prompt"_a, "max_new_tokens"_a, "temperature"_a, "top_k"_a, "top_p"_a, "seed"_a, "eos_ids"_a.none(),
          "want_logits"_a, "on_token"_a.none(), "on_progress"_a.none());

  m.def("parse_count", [](const std::string& text, const std::string& name) {
    try {
      return headinfer::parse_count(text, name.c_str());
    } catch (const headinfer::Error& e) {
      throw nb::value_error(e.what());
    }
  });
  m.def("plan_json", &plan_json, "config_json"_a, "source"_a, "options"_a, "context"_a, "gpu_mem"_a);
}
