#include "headinfer/options.h"

#include "headinfer/error.h"
#ifdef HEADINFER_WITH_CUDA
#include "headinfer/cuda_device.h"
#endif

namespace headinfer {

std::string resolve_device_kind(const DeviceChoice& c) {
  if (c.kind != "cpu" && c.kind != "cuda" && c.kind != "auto")
    throw Error("--device: '" + c.kind + "' is not cpu, cuda or auto");
#ifdef HEADINFER_WITH_CUDA
  if (c.kind == "cuda" || (c.kind == "auto" && cuda_device_count() > 0)) return "cuda";
#else
  if (c.kind == "cuda") throw Error("--device cuda: this build has no CUDA backend (configure with nvcc present)");
#endif
  return "cpu";
}

std::unique_ptr<Device> make_device(const DeviceChoice& c) {
#ifdef HEADINFER_WITH_CUDA
  if (resolve_device_kind(c) == "cuda") return make_cuda_device({0, static_cast<size_t>(c.gpu_mem)});
#else
  resolve_device_kind(c);
#endif
  return make_cpu_device({c.threads, static_cast<size_t>(c.gpu_mem)});
}

bool built_with_cuda() {
#ifdef HEADINFER_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace headinfer
