// What a move says, as one stream of events that every view of it reads: the progress line on a terminal, the
// text report, the --json object. A view is a MoveObserver; MoveJob sends every event to each of them in
// turn.
//
//   on_progress   the copy's or the cutovers' progress, a line that the next one replaces
//   on_batch      a batch ended (claimed, or given up): its record, as the report's "batches" lists them
//   on_finished   the move ended: the whole report, the object that --json prints
#pragma once

#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

namespace slotshift {

class MoveObserver {
 public:
  virtual ~MoveObserver() = default;
  virtual void on_progress(const std::string& /*line*/) {}
  virtual void on_batch(const nlohmann::json& /*batch*/) {}
  virtual void on_finished(const nlohmann::json& /*report*/) {}
};

// The progress line on stderr, where a terminal shows it (beside --json on stdout too); cleared before
// anything else is printed.
class ProgressView : public MoveObserver {
 public:
  explicit ProgressView(std::ostream& err) : err_(err) {}
  void on_progress(const std::string& line) override;
  void on_batch(const nlohmann::json&) override { clear(); }
  void on_finished(const nlohmann::json&) override { clear(); }

 private:
  void clear();
  std::ostream& err_;
  bool shown_ = false;
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
