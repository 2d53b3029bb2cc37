#include "orchestrator/move_metrics.h"

#include <httplib.h>

#include <algorithm>
#include <array>
#include <cstdio>

namespace slotshift {
namespace {

using Clock = std::chrono::steady_clock;

// The histogram's upper bounds, in seconds: around the 50 ms a pause is aimed at.
constexpr std::array<double, 10> kPauseBounds{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5};
constexpr std::array<const char*, 7> kPhases{"plan",    "prepare", "copy",  "cutover",
                                             "migrate", "clean",   "settle"};
constexpr std::array<const char*, 3> kOutcomes{"done", "failed", "unfinished"};

// A label value as the text format wants it: backslash, double quote and newline escaped.
std::string label(const std::string& value) {
  std::string out;
  for (const char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", v);
  return text;
}

void family(std::string& page, const char* name, const char* type, const char* help) {
  page += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string& page, const char* name, double value) {
  page += std::string(name) + " " + number(value) + "\n";
}

}  // namespace

MoveMetrics::MoveMetrics() : pause_buckets_(kPauseBounds.size()) {}

MoveMetrics::~MoveMetrics() {
  stop();
}

std::string MoveMetrics::start(const HostPort& listen) {
  server_ = std::make_unique<httplib::Server>();
  // A scrape is one short request: a slow or idle scraper is dropped rather than kept.
  server_->set_read_timeout(std::chrono::seconds(5));
  server_->set_write_timeout(std::chrono::seconds(5));
  server_->set_keep_alive_timeout(5);
  server_->set_payload_max_length(4096);
  server_->new_task_queue = [] { return new httplib::ThreadPool(2); };
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (!server_->bind_to_port(listen.host.c_str(), listen.port))
    return "cannot listen for --metrics on " + listen.str();
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  // cpp-httplib's stop() does nothing to a server whose thread has not begun to listen yet, which would then
  // listen for ever: a move refused at once stops it that early. So start() returns once it listens.
  for (const auto until = Clock::now() + std::chrono::seconds(5); !server_->is_running();) {
    if (Clock::now() > until) return "--metrics on " + listen.str() + ": the endpoint did not start in 5 s";
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return "";
}

void MoveMetrics::stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

void MoveMetrics::on_started(const nlohmann::json& plan) {
  std::lock_guard lock(mutex_);
  identity_ = plan;
}

void MoveMetrics::on_progress(const MoveProgress& now, const std::string&) {
  std::lock_guard lock(mutex_);
  now_ = now;
  phase_ = now.phase;
}

void MoveMetrics::on_batch(const nlohmann::json& batch) {
  std::lock_guard lock(mutex_);
  // A batch given up before its claim paused the source all the same: its pause counts.
  ++(batch.value("slots_claimed", 0) > 0 ? claimed_ : not_claimed_);
  const double pause_s = batch.value("pause_ms", 0.0) / 1000;
  for (std::size_t i = 0; i < kPauseBounds.size(); ++i)
    if (pause_s <= kPauseBounds[i]) ++pause_buckets_[i];
  pause_sum_s_ += pause_s;
  pause_max_s_ = std::max(pause_max_s_, pause_s);
  ++pauses_;
}

void MoveMetrics::on_finished(const nlohmann::json& report) {
  std::lock_guard lock(mutex_);
  phase_ = report.value("outcome", report.value("ok", false) ? "done" : "failed");
  ended_ = Clock::now();
}

std::string MoveMetrics::render() const {
  std::lock_guard lock(mutex_);
  std::string page;
  family(page, "slotshift_move_info", "gauge", "The running move: its id, target, engine and fence.");
  page += "slotshift_move_info{move=\"" + label(identity_.value("move", "")) + "\",target=\"" +
          label(identity_.value("target", "")) + "\",engine=\"" + label(identity_.value("engine", "")) +
          "\",fence=\"" + label(identity_.value("fence", "")) + "\"} 1\n";
  family(page, "slotshift_move_phase", "gauge",
         "1 for the phase the move is in (or its outcome once it has ended), 0 for the others.");
  auto phase = [&](const char* name) {
    page +=
        std::string("slotshift_move_phase{phase=\"") + name + "\"} " + (phase_ == name ? "1" : "0") + "\n";
  };
  std::ranges::for_each(kPhases, phase);
  std::ranges::for_each(kOutcomes, phase);
  // The families of one unlabelled sample each.
  struct Single {
    const char* name;
    const char* type;
    const char* help;
    double value;
  };
  const Single singles[] = {
      {"slotshift_move_keys_copied_total", "counter", "Keys of the moving slots written to the target.",
       static_cast<double>(now_.keys_copied)},
      {"slotshift_move_keys_estimated", "gauge", "Keys the moving slots held when the move planned.",
       static_cast<double>(now_.keys_estimated)},
      {"slotshift_move_bytes_copied_total", "counter", "Value bytes written to the target.",
       static_cast<double>(now_.bytes_copied)},
      {"slotshift_move_snapshot_bytes_read_total", "counter", "Bytes of the sources' snapshots read.",
       static_cast<double>(now_.snapshot_bytes)},
      {"slotshift_move_stream_operations_applied_total", "counter",
       "Live writes of the sources applied to the target.", static_cast<double>(now_.stream_operations)},
      {"slotshift_move_lag_bytes", "gauge",
       "Bytes of the sources' replication streams received and not yet applied to the target.",
       static_cast<double>(now_.lag_bytes)},
      {"slotshift_move_batch", "gauge", "The batch being cut over, from 1 (0 before the first).",
       static_cast<double>(now_.batch)},
      {"slotshift_move_batches_planned", "gauge",
       "Batches in the plan as it stands (re-planned after every batch; 0 when the engine plans one at a "
       "time).",
       static_cast<double>(now_.batches_planned)},
      {"slotshift_move_slots", "gauge", "Slots the move takes to the target.",
       static_cast<double>(now_.slots)},
      {"slotshift_move_slots_moved", "gauge", "Of those, slots the target owns by its own word.",
       static_cast<double>(now_.slots_moved)},
      {"slotshift_move_max_pause_seconds", "gauge", "The longest pause so far.", pause_max_s_},
      {"slotshift_move_elapsed_seconds", "gauge", "Seconds since slotshift started the move.",
       std::chrono::duration<double>((ended_ == Clock::time_point{} ? Clock::now() : ended_) - started_)
           .count()},
  };
  for (const auto& one : singles) {
    family(page, one.name, one.type, one.help);
    sample(page, one.name, one.value);
  }
  family(page, "slotshift_move_batches_total", "counter",
         "Batches ended, by whether their slots were claimed.");
  page += "slotshift_move_batches_total{result=\"claimed\"} " + number(static_cast<double>(claimed_)) + "\n";
  page += "slotshift_move_batches_total{result=\"not claimed\"} " +
          number(static_cast<double>(not_claimed_)) + "\n";
  family(page, "slotshift_move_pause_seconds", "histogram",
         "Each batch's pause of the source's writes (for --engine native: the stall a writer saw).");
  for (std::size_t i = 0; i < kPauseBounds.size(); ++i)
    page += "slotshift_move_pause_seconds_bucket{le=\"" + number(kPauseBounds[i]) + "\"} " +
            number(static_cast<double>(pause_buckets_[i])) + "\n";
  page += "slotshift_move_pause_seconds_bucket{le=\"+Inf\"} " + number(static_cast<double>(pauses_)) + "\n";
  sample(page, "slotshift_move_pause_seconds_sum", pause_sum_s_);
  sample(page, "slotshift_move_pause_seconds_count", static_cast<double>(pauses_));
  return page;
}

}  // namespace slotshift
