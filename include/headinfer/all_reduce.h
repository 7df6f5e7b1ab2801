#pragma once
// The collective of tensor parallelism (issue 16): shards of one model each hold a partial
// o_proj / down_proj output, and every shard needs their sum. One interface, so the model does
// not know the transport; the host implementation here runs N simulated devices in one process
// (one thread per shard). The NCCL one comes with a multi-GPU machine.
#include <memory>

#include "headinfer/backend.h"

namespace headinfer {

class AllReduce {
 public:
  virtual ~AllReduce() = default;
  virtual int n_ranks() const = 0;
  // Collective: every rank calls it once with its partial, F32 [rows, cols] (rows ld apart) in
  // `device`'s memory, the same shape on every rank. It returns when that buffer holds the sum of
  // all ranks' partials, added in rank order ((p0 + p1) + p2) + ..., so every rank holds the same
  // bits and a run is reproducible. One rank alone gets its partial back unchanged. Throws Error
  // after abort().
  virtual void sum(int rank, Device& device, const MatView& partial) = 0;
  // A rank that fails calls this, so the others stop waiting for it (their sum() throws) instead
  // of hanging. reset() re-arms it once no rank is inside sum().
  virtual void abort() = 0;
  virtual void reset() = 0;
};

// Through host memory: each rank copies its partial to a host slot, waits for all, then adds the
// slots in rank order and writes the sum back to its device. The slots grow to the largest
// partial once and are kept.
std::unique_ptr<AllReduce> make_host_all_reduce(int n_ranks);

}  // namespace headinfer
