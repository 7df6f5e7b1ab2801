#pragma once
// The engine's FIFO: one request runs, at most `queue` wait; the rest are turned away (429).
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

namespace headinfer::server {

class Scheduler {
 public:
  explicit Scheduler(int64_t queue) : queue_(queue) {}
  // A ticket, or 0 when the running request and `queue` waiting ones are already there.
  uint64_t admit();
  // Blocks until the ticket's turn (true), or until `tick` (called about every `tick_ms`)
  // returns false (the ticket leaves the queue; false).
  bool wait_turn(uint64_t ticket, const std::function<bool()>& tick, int tick_ms = 500);
  // Ends the running ticket's turn.
  void done();
  int64_t waiting() const;

 private:
  const int64_t queue_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<uint64_t> waiting_;
  bool running_ = false;
  uint64_t next_ = 1;
};

// Ends a turn however the request leaves.
class Turn {
 public:
  explicit Turn(Scheduler& s) : s_(&s) {}
  ~Turn() { s_->done(); }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;

 private:
  Scheduler* s_;
};

}  // namespace headinfer::server
