#pragma once
// N simulated CPU devices of one thread each (issue 16's split model on one machine), and the
// pointer list ShardedModel and Engine take.
#include <memory>
#include <vector>

#include "headinfer/backend.h"

namespace headinfer::test {

struct CpuDevices {
  explicit CpuDevices(int n) {
    for (int r = 0; r < n; ++r) {
      owned.push_back(make_cpu_device({1, 0}));  // the simulated devices share the machine's cores
      ptrs.push_back(owned.back().get());
    }
  }
  std::vector<std::unique_ptr<Device>> owned;
  std::vector<Device*> ptrs;
};

}  // namespace headinfer::test
