#pragma once
// The two bandwidths hybrid decode is planned with, measured once per machine and cached:
// the link (host tier -> device copies) and the host's KV read rate (host attention over KV in
// host memory). The cache is one small JSON file, <dir>/bandwidth.json, {"<key>": GB/s, ...},
// where <dir> is $XDG_CACHE_HOME/headinfer or ~/.cache/headinfer; keys name what was measured
// (the copy path, the CPU model and thread count), so one file serves several machines and
// backends. Flags override both numbers without touching the file.
#include <filesystem>
#include <functional>
#include <string>

namespace headinfer {

class Device;
class Transfer;

// "" when neither $XDG_CACHE_HOME nor $HOME is set (then nothing is cached).
std::filesystem::path bandwidth_cache_dir();

struct CachedValue {
  double gbps = 0.0;
  std::string source;  // "--flag", "cached in <file>", "measured (cached in <file>)", "measured"
};

// The value stored under `key` in `dir`/bandwidth.json, or else measure() stored there (written
// to a temporary file and renamed, so a reader never sees half a file). An unreadable or
// unwritable cache is not an error: the value is measured and used.
CachedValue cached_bandwidth(const std::filesystem::path& dir, const std::string& key,
                             const std::function<double()>& measure);

struct HybridBandwidths {
  CachedValue link;  // host tier -> device
  CachedValue dram;  // host attention KV read
};

// The link of `transfer` onto `device` (its name keys the cache) and the host attention read rate
// with `host_threads` threads (0: every core), each taken from its flag when > 0 (and the host read
// rate not measured at all when its flag is < 0: hybrid off does not need it).
HybridBandwidths resolve_hybrid_bandwidths(Transfer& transfer, Device& device, const std::string& link_name,
                                           double link_flag_gbps, double dram_flag_gbps, int host_threads);

}  // namespace headinfer
