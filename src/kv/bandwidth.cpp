#include "headinfer/bandwidth.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <thread>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "headinfer/backend.h"
#include "headinfer/error.h"
#include "headinfer/host_attention.h"
#include "headinfer/transfer.h"

namespace headinfer {
namespace {

// Big enough that caches and start-up costs do not show; small enough to take well under a second
// on the machines this plans for.
constexpr size_t kLinkProbeBytes = size_t{256} << 20;
constexpr size_t kReadProbeBytes = size_t{256} << 20;

nlohmann::json read_cache(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return nlohmann::json::object();
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j : nlohmann::json::object();
}

bool write_cache(const std::filesystem::path& dir, const std::filesystem::path& file, const nlohmann::json& j) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return false;
  const std::filesystem::path tmp = file.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp);
    if (!out) return false;
    out << j.dump(2) << "\n";
    if (!out) return false;
  }
  std::filesystem::rename(tmp, file, ec);
  if (ec) std::filesystem::remove(tmp, ec);
  return !ec;
}

}  // namespace

std::filesystem::path bandwidth_cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0')
    return std::filesystem::path(xdg) / "headinfer";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0')
    return std::filesystem::path(home) / ".cache" / "headinfer";
  return {};
}

CachedValue cached_bandwidth(const std::filesystem::path& dir, const std::string& key,
                             const std::function<double()>& measure) {
  if (dir.empty()) return {measure(), "measured"};
  const std::filesystem::path file = dir / "bandwidth.json";
  nlohmann::json j = read_cache(file);
  if (j.contains(key) && j[key].is_number() && j[key].get<double>() > 0)
    return {j[key].get<double>(), "cached in " + file.string()};
  const double gbps = measure();
  j[key] = gbps;
  return {gbps, write_cache(dir, file, j) ? "measured, cached in " + file.string() : "measured"};
}

HybridBandwidths resolve_hybrid_bandwidths(Transfer& transfer, Device& device, const std::string& link_name,
                                           double link_flag_gbps, double dram_flag_gbps, int host_threads) {
  const std::filesystem::path dir = bandwidth_cache_dir();
  HybridBandwidths out;
  if (link_flag_gbps > 0) {
    out.link = {link_flag_gbps, "--link-gbps"};
  } else {
    // The probe takes device memory: at most half of what the budget still has free, so a tight
    // --gpu-mem never fails here (a smaller probe only times the link a little less well).
    size_t probe = kLinkProbeBytes;
    if (device.memory_budget() != 0) {
      const size_t free_bytes = device.memory_budget() > device.bytes_in_use() ? device.memory_budget() - device.bytes_in_use() : 0;
      probe = std::min(probe, free_bytes / 2);
    }
    if (probe < (size_t{1} << 20))
      throw Error("--hybrid auto: no device memory left to measure the link; give --link-gbps");
    out.link = cached_bandwidth(dir, "link: " + link_name, [&] { return measure_copy_gbps(transfer, device, probe); });
  }
  if (dram_flag_gbps > 0) {
    out.dram = {dram_flag_gbps, "--dram-gbps"};
  } else if (dram_flag_gbps < 0) {
    out.dram = {0.0, "not needed"};
  } else {
    const int threads = host_threads > 0 ? host_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    // Decode shape of the models planned for: BF16 KV, head_dim 128, GQA 4.
    out.dram = cached_bandwidth(dir, "host attention bf16: " + host_cpu_name() + " x" + std::to_string(threads), [&] {
      HostAttentionOptions o;
      o.n_threads = threads;
      o.max_q_heads = 4;
      HostAttention attention(o);
      return measure_host_attention_gbps(attention, DType::BF16, kReadProbeBytes, 4);
    });
  }
  return out;
}

}  // namespace headinfer
