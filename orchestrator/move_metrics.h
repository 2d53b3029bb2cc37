// slotshift move --metrics HOST:PORT: the running move's figures at http://HOST:PORT/metrics, in Prometheus's
// text format, for a scraper beside a long move (a Kubernetes Job's pod, a ServiceMonitor):
//
//   slotshift_move_info{move,target,engine,fence}   1 (the move's identity)
//   slotshift_move_phase{phase}                     1 for the phase the move is in, 0 for the others
//   slotshift_move_keys_copied_total, _keys_estimated, _bytes_copied_total, _snapshot_bytes_read_total,
//   slotshift_move_stream_operations_applied_total, _lag_bytes
//   slotshift_move_batch, _batches_planned, _batches_total{result="claimed|not claimed"}
//   slotshift_move_slots, _slots_moved
//   slotshift_move_pause_seconds (histogram of the batches' pauses), _max_pause_seconds
//   slotshift_move_elapsed_seconds
//
// The endpoint reads only this observer's copy of the figures, under its lock: it never touches the move's
// own state, and a slow scraper cannot hold up the move. It carries no secret (node addresses at most) and
// asks for no token. It ends with the process: the report (--json) has the final figures.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/host_port.h"
#include "orchestrator/move_report.h"

namespace httplib {
class Server;
}

namespace slotshift {

class MoveMetrics : public MoveObserver {
 public:
  MoveMetrics();
  ~MoveMetrics() override;
  MoveMetrics(const MoveMetrics&) = delete;
  MoveMetrics& operator=(const MoveMetrics&) = delete;

  // Binds `listen` and serves from a thread of its own; "" or why it cannot.
  std::string start(const HostPort& listen);
  void stop();

  void on_started(const nlohmann::json& plan) override;
  void on_progress(const MoveProgress& now, const std::string& line) override;
  void on_batch(const nlohmann::json& batch) override;
  void on_finished(const nlohmann::json& report) override;

  // The page, as a scrape gets it.
  std::string render() const;

 private:
  mutable std::mutex mutex_;
  nlohmann::json identity_;
  std::string phase_ = "plan";
  MoveProgress now_;
  std::size_t claimed_ = 0, not_claimed_ = 0;
  std::vector<std::uint64_t> pause_buckets_;  // counts at or under each bound of kPauseBounds
  double pause_sum_s_ = 0, pause_max_s_ = 0;
  std::uint64_t pauses_ = 0;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point ended_{};

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace slotshift
