// What a move says, as one stream of events that every view of it reads: the progress line on a terminal, the
// progress lines of a log, the text report, the --json object, the metrics port. A view is a MoveObserver;
// MoveJob sends every event to each of them in turn.
//
//   on_started    the move's plan is final and its journal open: its id, target, engine, fence, slots
//   on_progress   where the move is (MoveProgress), and the same as a line that the next one replaces
//   on_batch      a batch ended (claimed, or given up): its record, as the report's "batches" lists them
//   on_finished   the move ended: the whole report, the object that --json prints
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

namespace slotshift {

// Where a running move is, in numbers: the progress line's figures, and what the metrics port serves.
struct MoveProgress {
  std::string phase;  // prepare, copy, cutover (or migrate, for --engine native), clean, settle
  std::uint64_t keys_copied = 0, keys_estimated = 0;
  std::uint64_t bytes_copied = 0;       // value bytes sent to the target
  std::uint64_t snapshot_bytes = 0;     // of the sources' snapshots, read so far
  std::uint64_t stream_operations = 0;  // live writes of the sources applied to the target
  std::uint64_t lag_bytes = 0;          // of the sources' streams, not yet applied to the target
  std::size_t batch = 0;                // the batch being cut over (from 1), 0 before the first
  std::size_t batches_planned = 0;      // as planned now: the sizer re-plans after every batch
  std::size_t slots = 0, slots_moved = 0;
};

class MoveObserver {
 public:
  virtual ~MoveObserver() = default;
  virtual void on_started(const nlohmann::json& /*plan*/) {}
  virtual void on_progress(const MoveProgress& /*now*/, const std::string& /*line*/) {}
  virtual void on_batch(const nlohmann::json& /*batch*/) {}
  virtual void on_finished(const nlohmann::json& /*report*/) {}
};

// The progress line on stderr, where a terminal shows it (beside --json on stdout too); cleared before
// anything else is printed.
class ProgressView : public MoveObserver {
 public:
  explicit ProgressView(std::ostream& err) : err_(err) {}
  void on_progress(const MoveProgress& now, const std::string& line) override;
  void on_batch(const nlohmann::json&) override { clear(); }
  void on_finished(const nlohmann::json&) override { clear(); }

 private:
  void clear();
  std::ostream& err_;
  bool shown_ = false;
};

// The progress for a log (stderr that is not a terminal: a file, a pipe, a Kubernetes Job's log): a line with
// the time whenever the phase changes, and at most one every `interval` in between; then the outcome.
class ProgressLog : public MoveObserver {
 public:
  ProgressLog(std::ostream& err, std::chrono::milliseconds interval) : err_(err), interval_(interval) {}
  void on_started(const nlohmann::json& plan) override;
  void on_progress(const MoveProgress& now, const std::string& line) override;
  void on_finished(const nlohmann::json& report) override;

 private:
  void print(const std::string& line);
  std::ostream& err_;
  std::chrono::milliseconds interval_;
  std::string phase_;
  std::chrono::steady_clock::time_point last_{};
};

// For people: a line per batch as it ends, then notes, warnings and the summary (or the error, on `err`).
class TextReport : public MoveObserver {
 public:
  TextReport(std::ostream& out, std::ostream& err) : out_(out), err_(err) {}
  void on_batch(const nlohmann::json& batch) override;
  void on_finished(const nlohmann::json& report) override;

 private:
  std::ostream& out_;
  std::ostream& err_;
};

// --json: the report as one object on stdout at the end.
class JsonReport : public MoveObserver {
 public:
  explicit JsonReport(std::ostream& out) : out_(out) {}
  void on_finished(const nlohmann::json& report) override { out_ << report.dump(2) << "\n"; }

 private:
  std::ostream& out_;
};

}  // namespace slotshift
