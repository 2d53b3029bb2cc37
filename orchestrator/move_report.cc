#include "orchestrator/move_report.h"

#include "orchestrator/move_job.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/time_text.h"
#include "common/topology.h"
#include "orchestrator/native_migration.h"

namespace slotshift {

nlohmann::json MoveJob::batch_record(const Source& src, const Batch& b) const {
  return {{"source", src.address.str()},
          {"slots", format_slot_ranges(slot_ranges(b.slots))},
          {"slot_count", b.slots.size()},
          {"started_ms", b.started_ms},
          {"keys", b.source_keys},
          {"pause_ms", b.pause_ms},
          {"refuse_ms", b.refuse_ms},
          {"stall_ms", sizer_.stall_ms(b)},
          {"wait_ms", b.wait_ms},
          {"claim_ms", b.claim_ms},
          {"claim_send_ms", b.claim_send_ms},
          {"hold_ms", b.hold_ms},
          {"hold_call_ms", b.hold_call_ms},
          {"handoff_ms", b.handoff_ms},
          {"proxies_held", b.proxies_held},
          {"proxies_held_with_handoff", b.proxies_held_with_handoff},
          {"hold_batches", b.hold_batches},
          {"attempts_under_group_hold", b.attempts_under_group_hold},
          {"handed_off", b.handed_off},
          {"handoff_placed_next_hold", b.handoff_placed_next_hold},
          {"proxies_held_again", b.proxies_held_again},
          {"proxies_asked_again", b.proxies_asked_again},
          {"proxies_back", b.proxies_back},
          {"proxies_still_out", b.proxies_still_out},
          {"attempts", b.attempts},
          {"slots_claimed",
           std::count_if(b.slots.begin(), b.slots.end(), [&](Slot slot) { return claimed_[slot]; })},
          {"engine", native_ ? "native" : "replica"}};
}

void MoveJob::batch_ended(const Source& src, const Batch& batch) {
  if (batch.attempts == 0) return;
  const auto record = batch_record(src, batch);
  for (auto& o : observers_)
    o->on_batch(record);
}

void MoveJob::report(bool ok) {
  std::uint64_t keys = 0, bytes = 0, expired = 0, chunked = 0, repairs = 0, applied = 0, unknown = 0;
  double max_pause = 0, max_stall = 0, max_refuse = 0;
  nlohmann::json sources = nlohmann::json::array(), batches = nlohmann::json::array();
  for (const auto& src : sources_) {
    if (native_) {
      // The servers carried the values: what is known is what each batch counted before it moved.
      std::uint64_t moved = 0;
      for (const auto& b : src.batches)
        if (claimed_[b.slots.front()]) moved += b.source_keys;
      keys += moved;
      sources.push_back({{"source", src.address.str()},
                         {"source_id", src.node.id},
                         {"server", src.info.name()},
                         {"engine", "native"},
                         {"slots", format_slot_ranges(slot_ranges(src.slots))},
                         {"keys_moved", moved}});
    }
    for (const auto& b : src.batches) {
      if (b.attempts == 0) continue;
      max_pause = std::max(max_pause, b.pause_ms);
      max_refuse = std::max(max_refuse, b.refuse_ms);
      max_stall = std::max(max_stall, sizer_.stall_ms(b));
      batches.push_back(batch_record(src, b));
    }
    if (!src.copier) continue;
    const auto& st = src.copier->stats();
    keys += st.keys_copied;
    bytes += st.bytes_copied;
    expired += st.keys_expired;
    chunked += st.keys_chunked;
    repairs += st.repairs;
    applied += st.stream_applied;
    unknown += st.unknown_commands;
    sources.push_back({{"source", src.address.str()},
                       {"source_id", src.node.id},
                       {"server", src.info.name()},
                       {"slots", format_slot_ranges(slot_ranges(src.slots))},
                       {"keys_copied", st.keys_copied.load()},
                       {"bytes_copied", st.bytes_copied.load()},
                       {"keys_expired_skipped", st.keys_expired.load()},
                       {"keys_chunked", st.keys_chunked.load()},
                       {"snapshot_bytes", st.rdb_bytes.load()},
                       {"stream_bytes", st.stream_bytes.load()},
                       {"stream_operations_applied", st.stream_applied.load()},
                       {"keys_repaired", st.repairs.load()},
                       {"unknown_commands_dropped", st.unknown_commands.load()},
                       {"writes_after_fence", st.writes_after_fence.load()},
                       {"snapshot_header_ms", st.header_ms.load()},
                       {"snapshot_parsed_ms", st.received_ms.load()},
                       {"snapshot_applied_ms", st.applied_ms.load()},
                       {"spilled_peak_bytes", src.copier->spool_peak()}});
  }
  for (const auto& src : sources_)
    if (src.copier && src.copier->stats().writes_after_fence > 0)
      warnings_.push_back(std::to_string(src.copier->stats().writes_after_fence.load()) +
                          " writes reached the source " + src.address.str() +
                          " for slots past their fence and are not on the target (first: " +
                          src.copier->first_late_write() + ")");
  if (unknown > 0)
    warnings_.push_back(
        std::to_string(unknown) +
        " commands of the stream were not in the command table (module commands?) and were not "
        "applied to the target");
  nlohmann::json j{{"ok", ok},
                   {"engine", native_ ? "native" : "replica"},
                   {"fence", options_.fence},
                   {"target", target_address_.str()},
                   {"target_id", target_.id},
                   {"sources", sources},
                   {"batches", batches},
                   {"keys_copied", keys},
                   {"bytes_copied", bytes},
                   {"live_writes_followed", applied},
                   {"keys_repaired", repairs},
                   {"keys_expired_skipped", expired},
                   {"keys_chunked", chunked},
                   {"elapsed_s", ms_since(started_) / 1000},
                   {"copy_s", copy_s_},
                   {"cutover_s", cutover_s_},
                   {"replica_cleanup_s", cleanup_s_},
                   {"settle_s", settle_s_},
                   {"max_pause_ms", max_pause},
                   {"max_refuse_ms", max_refuse},
                   {"max_stall_ms", max_stall},
                   {"warnings", warnings_},
                   {"notes", notes_}};
  j["exit_status"] = exit_status_;
  j["outcome"] = exit_status_name(exit_status_);
  if (!ok) j["error"] = error_;
  for (auto& o : observers_)
    o->on_finished(j);
}

void ProgressView::on_progress(const MoveProgress&, const std::string& line) {
  err_ << "\r\033[K" << line << std::flush;
  shown_ = true;
}

void ProgressView::clear() {
  if (shown_) err_ << "\r\033[K" << std::flush;
  shown_ = false;
}

void ProgressLog::print(const std::string& line) {
  err_ << now_rfc3339() << " slotshift move: " << line << "\n" << std::flush;
}

void ProgressLog::on_started(const nlohmann::json& plan) {
  print("started " + plan.value("move", "") + ": slots " + plan.value("slots", "") + " to " +
        plan.value("target", "") + " (journal " + plan.value("journal", "") + ")");
}

void ProgressLog::on_progress(const MoveProgress& now, const std::string& line) {
  // A phase's first line always: a log reader sees every phase begin. Within one, a line every interval.
  const auto t = std::chrono::steady_clock::now();
  if (now.phase == phase_ && t - last_ < interval_) return;
  phase_ = now.phase;
  last_ = t;
  print(line);
}

void ProgressLog::on_finished(const nlohmann::json& r) {
  char line[160];
  std::snprintf(line, sizeof line, "finished: %s (exit status %d) after %.2f s, %zu batches",
                r.value("outcome", "").c_str(), r.value("exit_status", -1), r.value("elapsed_s", 0.0),
                r.contains("batches") ? r["batches"].size() : 0);
  print(line);
}

void TextReport::on_batch(const nlohmann::json& b) {
  char line[256];
  if (b["engine"] == "native") {
    std::snprintf(line, sizeof line, "  batch %-24s %6zu slots %9s keys  stall %6.1f ms (migration %.1f ms)",
                  b["slots"].get<std::string>().substr(0, 24).c_str(), b["slot_count"].get<std::size_t>(),
                  with_commas(b["keys"].get<std::uint64_t>()).c_str(), b["pause_ms"].get<double>(),
                  b["claim_ms"].get<double>());
    out_ << line;
  } else {
    std::snprintf(
        line, sizeof line,
        "  batch %-24s %6zu slots %9s keys  pause %6.1f ms (wait %.1f, claim %.1f of which sent %.1f)",
        b["slots"].get<std::string>().substr(0, 24).c_str(), b["slot_count"].get<std::size_t>(),
        with_commas(b["keys"].get<std::uint64_t>()).c_str(), b["pause_ms"].get<double>(),
        b["wait_ms"].get<double>(), b["claim_ms"].get<double>(), b["claim_send_ms"].get<double>());
    out_ << line;
    if (const double refused = b["refuse_ms"].get<double>(); refused > 0) {
      std::snprintf(line, sizeof line, ", then writes refused %.1f ms", refused);
      out_ << line;
    }
  }
  if (const auto claimed = b["slots_claimed"].get<std::size_t>(); claimed == 0)
    out_ << "  (not claimed)";
  else if (claimed < b["slot_count"].get<std::size_t>())
    out_ << "  (" << claimed << " of its slots claimed)";
  out_ << "\n" << std::flush;
}

void TextReport::on_finished(const nlohmann::json& r) {
  for (const auto& n : r["notes"])
    out_ << "note: " << n.get<std::string>() << "\n";
  for (const auto& w : r["warnings"])
    out_ << "warning: " << w.get<std::string>() << "\n";
  if (!r["ok"].get<bool>()) {
    err_ << "slotshift move: " << r["error"].get<std::string>() << "\n";
    return;
  }
  const bool native = r["engine"] == "native";
  char line[256];
  std::snprintf(line, sizeof line,
                "moved %s keys (%s) to %s %s in %.2f s (copy %.2f s), %zu batches, longest %s %.1f ms\n",
                with_commas(r["keys_copied"].get<std::uint64_t>()).c_str(),
                human_bytes(static_cast<double>(r["bytes_copied"].get<std::uint64_t>())).c_str(),
                short_id(r["target_id"].get<std::string>()).c_str(), r["target"].get<std::string>().c_str(),
                r["elapsed_s"].get<double>(), r["copy_s"].get<double>(), r["batches"].size(),
                native                  ? "stall of a writer"
                : r["fence"] == "proxy" ? "stall of the source"
                                        : "pause",
                r["max_stall_ms"].get<double>());
  out_ << line;
  if (native) return;
  out_ << "  " << with_commas(r["live_writes_followed"].get<std::uint64_t>()) << " live writes followed, "
       << with_commas(r["keys_repaired"].get<std::uint64_t>()) << " keys read again after a refused replay, "
       << with_commas(r["keys_expired_skipped"].get<std::uint64_t>()) << " expired keys skipped, "
       << with_commas(r["keys_chunked"].get<std::uint64_t>()) << " big keys sent in chunks\n";
}

}  // namespace slotshift
