#include "scheduler.h"

#include <algorithm>
#include <chrono>

namespace headinfer::server {

uint64_t Scheduler::admit() {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t in_system = static_cast<int64_t>(waiting_.size()) + (running_ ? 1 : 0);
  if (in_system >= queue_ + 1) return 0;
  waiting_.push_back(next_);
  return next_++;
}

bool Scheduler::wait_turn(uint64_t ticket, const std::function<bool()>& tick, int tick_ms) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto next_tick = std::chrono::steady_clock::now() + std::chrono::milliseconds(tick_ms);
  for (;;) {
    if (!running_ && !waiting_.empty() && waiting_.front() == ticket) {
      waiting_.pop_front();
      running_ = true;
      return true;
    }
    if (cv_.wait_until(lock, next_tick) == std::cv_status::timeout) {
      next_tick += std::chrono::milliseconds(tick_ms);
      lock.unlock();
      const bool stay = tick();  // writes to the client: never under the lock
      lock.lock();
      if (!stay) {
        waiting_.erase(std::find(waiting_.begin(), waiting_.end(), ticket));
        cv_.notify_all();
        return false;
      }
    }
  }
}

void Scheduler::done() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    running_ = false;
  }
  cv_.notify_all();
}

int64_t Scheduler::waiting() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(waiting_.size());
}

}  // namespace headinfer::server
