// Engine::load_kv on arbitrary files: the header, the index JSON, the section layout and checksums,
// the ids and the K/V rows, against an engine of the shared tiny sliding-window model
// (models/tiny/mistral_swa-f32: 3 layers, 2 kv heads, window 48) on the CPU backend.
//
// Input byte 0 picks the mode. Even: the rest is the file as it is, so the header and checksum
// checks are fuzzed. Odd: the rest is repaired first, as a writer that computes its checksums
// would: each index section's checksum recomputed from the bytes at its offset (a layer section
// chained over its 2 x kv_heads blocks, as save_kv does), then the index checksum and length, then
// the header checksum. Random bytes almost never pass a 64-bit checksum, so without this the
// layout, window and id checks behind them would stay out of reach.
//
// Promises checked: load_kv fails only with headinfer::Error (anything else escapes and libFuzzer
// reports it), after which the held context is either what it was or empty; after a success the
// context holds the file's positions (at most the engine's context) and one more token can be fed.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "headinfer/backend.h"
#include "headinfer/checkpoint.h"
#include "headinfer/engine.h"
#include "headinfer/error.h"
#include "headinfer/kv_snapshot.h"

namespace {

using namespace headinfer;

constexpr int64_t kContext = 96;

struct Fixture {
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<Device> device;
  std::unique_ptr<Engine> engine;
  std::filesystem::path file;
};

Fixture& fixture() {
  static Fixture* f = [] {
    auto* x = new Fixture;
    x->checkpoint = Checkpoint::open(fuzz::testdata_dir() / "models" / "tiny" / "mistral_swa-f32");
    CpuDeviceOptions d;
    d.n_threads = 1;
    x->device = make_cpu_device(d);
    EngineOptions o;
    o.context = kContext;
    x->engine = std::make_unique<Engine>(*x->checkpoint, *x->device, o);
    x->file = std::filesystem::temp_directory_path() /
              ("headinfer_fuzz_kv_" + std::to_string(static_cast<long long>(::getpid())) + ".snap");
    return x;
  }();
  return *f;
}

std::string hex64(uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

uint64_t read_u64(const std::vector<uint8_t>& f, size_t at) {
  uint64_t v = 0;
  std::memcpy(&v, f.data() + at, 8);
  return v;
}
void write_u64(std::vector<uint8_t>& f, size_t at, uint64_t v) { std::memcpy(f.data() + at, &v, 8); }

// The odd mode's repair (see the top of the file).
void repair(std::vector<uint8_t>& f, int64_t n_kv_heads) {
  if (f.size() < kKvSnapshotHeaderBytes) return;
  const uint64_t io = read_u64(f, 16);
  if (io >= kKvSnapshotHeaderBytes && io <= f.size()) {
    nlohmann::json index = nlohmann::json::parse(f.begin() + static_cast<std::ptrdiff_t>(io), f.end(), nullptr, false);
    if (!index.is_discarded() && index.is_object() && index.contains("sections") && index["sections"].is_array()) {
      auto& sections = index["sections"];
      for (size_t i = 0; i < sections.size(); ++i) {
        auto& s = sections[i];
        if (!s.is_object() || !s.contains("offset") || !s.contains("bytes") || !s["offset"].is_number_unsigned() ||
            !s["bytes"].is_number_unsigned())
          continue;
        const auto offset = s["offset"].get<uint64_t>(), bytes = s["bytes"].get<uint64_t>();
        if (offset > io || bytes > io - offset) continue;
        const uint8_t* p = f.data() + offset;
        uint64_t sum = 0;
        const auto blocks = static_cast<uint64_t>(2 * n_kv_heads);
        if (i > 0 && bytes % blocks == 0) {
          for (uint64_t b = 0; b < blocks; ++b) sum = kv_checksum(p + b * (bytes / blocks), bytes / blocks, sum);
        } else {
          sum = kv_checksum(p, bytes);
        }
        s["checksum"] = hex64(sum);
      }
      const std::string text = index.dump();
      f.resize(io);
      f.insert(f.end(), text.begin(), text.end());
    }
    write_u64(f, 24, f.size() - io);
    write_u64(f, 32, kv_checksum(f.data() + io, f.size() - io));
  }
  write_u64(f, 40, kv_checksum(f.data(), 40));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Fixture& fx = fixture();
  Engine& engine = *fx.engine;
  std::vector<uint8_t> file(data + 1, data + size);
  if (data[0] & 1) repair(file, engine.config().n_kv_heads);
  {
    std::ofstream out(fx.file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(file.data()), static_cast<std::streamsize>(file.size()));
    if (!out) fuzz::fail("cannot write the temporary snapshot");
  }
  const int64_t before = engine.n_past();
  Engine::SnapshotStats stats;
  try {
    stats = engine.load_kv(fx.file);
  } catch (const Error&) {
    if (engine.n_past() != before && engine.n_past() != 0) fuzz::fail("a failed load left a partial context");
    return 0;
  }
  if (stats.positions != engine.n_past() || engine.n_past() < 0 || engine.n_past() > kContext)
    fuzz::fail("a loaded context disagrees with the file or passes the context");
  if (engine.n_past() < kContext) {
    const int32_t next = 1;
    try {
      engine.prefill(std::span<const int32_t>(&next, 1));
    } catch (const Error&) {
      fuzz::fail("the loaded context cannot take one more token");
    }
  }
  return 0;
}
