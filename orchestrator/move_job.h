// The move's machinery, shared by the files that each hold one part of it:
//
//   move_job.cc      the run from plan to done, the journal, the copy, verification, cleaning the replicas
//   move_plan.cc     the plan and its refusals (what slotshift checks before it touches anything)
//   batch_sizer.h    how many slots a cutover takes (pure)
//   cutover.cc       one batch's fence and claim, and the source's fence until it learns
//   claim_settle.cc  after a claim that failed: what the target owns by its own word
//   move_undo.cc     undoing what was not claimed, and abort/resume after a crash
//   move_native.cc   --engine native: the servers' own CLUSTER MIGRATESLOTS behind the same batches
//   move_report.*    what the user is told: observers of the move's events (progress, text, --json)
//
// Not part of slotshift's interface (move.h is).
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "common/server_info.h"
#include "common/topology.h"
#include "orchestrator/batch_sizer.h"
#include "orchestrator/copier.h"
#include "orchestrator/exit_status.h"
#include "orchestrator/journal.h"
#include "orchestrator/move.h"
#include "orchestrator/move_lease.h"
#include "orchestrator/move_metrics.h"
#include "orchestrator/move_report.h"
#include "orchestrator/node_client.h"
#include "orchestrator/proxy_control.h"

namespace slotshift {

// Set by SIGINT and SIGTERM during a move: it stops at the next batch boundary and undoes the rest.
extern std::atomic<int> g_move_interrupted;
extern "C" void on_move_interrupt(int sig);

double ms_since(Clock::time_point t);
std::string human_bytes(double b);
std::string with_commas(std::uint64_t n);
// CLUSTER COUNTKEYSINSLOT of every slot, in one round trip; nullopt (c.error()) when the connection fails.
std::optional<std::vector<std::uint64_t>> count_keys(NodeClient& c, const std::vector<Slot>& slots);
std::string join(const std::vector<std::string>& parts, const std::string& separator = " ");

struct Source {
  Node node;
  HostPort address;
  ServerInfo info;
  std::vector<Slot> slots;
  std::uint64_t estimated_keys = 0;
  std::uint64_t estimated_bytes = 0;
  std::unique_ptr<SlotCopier> copier;
  NodeClient control;
  std::vector<Batch> batches;
  bool paused = false;
  // Servers that crash when they learn a claim while paused (ServerInfo::survives_paused_claim) are fenced
  // for the claim by refusing writes instead: min-replicas-to-write raised out of reach, then restored to
  // these values (read before the move starts).
  bool refusing = false;
  // Set when the source had still not learnt a claim at the deadline: its refusal of writes is the only fence
  // left, and it stays for an operator to lift once the source names the new owner.
  bool keep_refusing = false;
  std::string min_replicas_to_write, min_replicas_max_lag;
  bool can_refuse = false;  // both were read
};

// Which of some slots the target owns in its own view: the only word on a claim that counts (REDIS-FACTS, "A
// claim is never known from the reply alone").
struct TargetView {
  bool known = false;
  std::vector<Slot> owned, other;
  std::set<Slot> importing;           // of `other`, those the target still has in IMPORTING
  std::set<Slot> unbound;             // of `other`, those no master owns in the target's view
  std::map<Slot, std::string> owner;  // of `other`, the owner in the target's view
  std::string error;                  // why it is not known
};

// The address of every node of `topology`, masters and replicas.
std::vector<HostPort> every_node(const Topology& topology);

class MoveJob {
 public:
  MoveJob(const MoveOptions& options, std::ostream& out, std::ostream& err)
      : options_(options), out_(out), err_(err) {
    if (options.progress && isatty(STDERR_FILENO))
      observers_.push_back(std::make_unique<ProgressView>(err));
    else if (options.progress)
      observers_.push_back(std::make_unique<ProgressLog>(err, options.progress_interval));
    if (options.metrics) {
      auto metrics = std::make_unique<MoveMetrics>();
      metrics_ = metrics.get();
      observers_.push_back(std::move(metrics));
    }
    if (options.common.json)
      observers_.push_back(std::make_unique<JsonReport>(out));
    else
      observers_.push_back(std::make_unique<TextReport>(out, err));
  }

  ~MoveJob() {
    // The warm-up's thread asks the lease's fence and uses the proxies' connections: it ends before any
    // member goes (a move that fails during its copy never reaches proxies_ready() otherwise).
    proxies_ready();
    if (journal_fd_ >= 0) ::close(journal_fd_);
  }
  MoveJob(const MoveJob&) = delete;
  MoveJob& operator=(const MoveJob&) = delete;

  int run();
  // slotshift abort (resume == false) and resume: the move of a journal, after a crash.
  int recover(bool resume);

 private:
  // A hold placed on the proxies: the slots it names, the proxies' answers, when it was sent (where the fence
  // clock of every batch under it starts) and answered, and how many batches it was placed for. One batch's,
  // or a group's: the next hold_span() batches (orchestrator/hold_span.h) as planned when it was placed,
  // whose handoffs then wait for the group's last batch and go as one call (hand_off()). Placed by a batch's
  // handoff for what follows (placed_hold_), or by cut_over()'s own HOLD; the hold a batch is cut over under
  // is hold_in_force_. A move that fails hands off the group's claimed batches, then releases every hold of
  // this owner (rollback()). One that stops without its lease sends nothing more, and one killed between
  // batches cannot: then the hold ends by itself after its ttl (--pause-timeout), as a batch's hold does when
  // the move dies inside the batch, and the claimed slots' held commands go to the old owner, whose MOVED the
  // proxies follow.
  struct PlacedHold {
    std::string slots;
    std::vector<bool> cover = std::vector<bool>(kSlotCount);
    ProxyCalls calls;
    Clock::time_point sent;
    Clock::time_point answered;
    double call_ms = 0;
    std::size_t batches = 1;
    std::size_t used = 0;  // batches claimed under it so far
    bool covers(const std::vector<Slot>& slots) const;
  };
  bool plan();
  bool estimate();
  void print_plan();
  bool prepare();
  bool copy();
  bool cut_over_all();
  // --engine native: every batch of every source by CLUSTER MIGRATESLOTS.
  bool migrate_native_all();
  bool migrate_native(Source& source, Batch& batch);
  // After a crash of a native move: the servers' migrations stopped, the settings put back, and which slots
  // moved taken from the target (before rollback(), which then has nothing IMPORTING to undo).
  void settle_native(const JournalState& state);
  // One batch. True when it was claimed; false with `retry` set when it was abandoned before its claim and
  // may be tried again. With `hand_off_later` a claimed batch's proxies are told by hand_off() (the
  // caller's), once the source has learnt the claim; else while it learns.
  // `fresh`: the hold a HOLD of its own places (this batch's slots, or a group's) when none was placed for
  // it.
  bool cut_over(Source& source, Batch& batch, bool hand_off_later, bool& retry, const PlacedHold& fresh);
  // The proxies route a claimed batch to the target and release it, so that each batch (or group) costs the
  // fleet one round trip.
  // With `next`, the same call places the next hold (placed_hold_): one batch's or a group's (hold_cover()).
  // With `deferred_`, the group's claimed batches are routed and released in the same call.
  void hand_off(Batch& batch, const PlacedHold* next);
  // The hold of `first` and of the batches planned after it (`planned` from `from`): hold_span() batches in
  // all (orchestrator/hold_span.h), from the last call to every proxy and the last batch's span.
  PlacedHold hold_cover(const Batch& first, const std::vector<Batch>& planned, std::size_t from) const;
  // A call to every proxy, begun at `since`, has been waited for: left out of the batch's span. Returns how
  // long it took (ms), for the caller's report.
  double fleet_waited(Clock::time_point since) {
    const double ms = ms_since(since);
    batch_fleet_ms_ += ms;
    return ms;
  }
  // The group's claimed batches routed and released now, each told as ended (the group ends).
  void hand_off_deferred();
  // `slots` and the deferred batches' slots, as a control call names them.
  std::string with_deferred(const std::vector<Slot>& slots) const;
  // The deferred batches' records once their handoff has been sent: it took `call_ms`, and their clients were
  // held `hold_ms`.
  void deferred_handed_off(double call_ms, double hold_ms);
  // A hold that ends (given back, abandoned, a group over): the group's claimed batches handed off, then the
  // slots it covers that no batch has claimed released, but `keep`'s (a batch whose claim is being settled)
  // and those `next` holds again.
  void end_hold(const PlacedHold& hold, const std::vector<Slot>& keep = {}, const PlacedHold* next = nullptr);
  // The slots `hold` covers that no batch has claimed, but `keep`'s and those `next` holds again, as a
  // control call names them ("" for none): what a group that ends lets go.
  std::string unclaimed_cover(const PlacedHold& hold, const std::vector<Slot>& keep,
                              const PlacedHold* next) const;
  // How long the proxies may take to drain a hold before they give it up.
  std::chrono::milliseconds hold_wait() const;
  // After an error at or after a batch's first SETSLOT ... NODE: asks the target what it owns, keeps the
  // source fenced until it knows, and leaves the rest to rollback(). Always false (the move stops).
  void drop_setslot_connections();
  void follow_target_failover();
  bool settle_claim(Source& source, Batch& batch, const std::string& claim_error, bool held);
  TargetView target_view(const std::vector<Slot>& slots);
  // Until the source names the target as the owner of every slot, or learn_timeout(); `slow` (if any) is
  // called once when that takes longer than `slow_after`.
  bool wait_source_learns(Source& source, const std::vector<Slot>& slots,
                          std::chrono::milliseconds slow_after = std::chrono::milliseconds(0),
                          const std::function<void()>& slow = {});
  // `slow` (if any) is called once when the nodes have not all agreed within --max-pause.
  bool verify(const Batch& batch, const std::function<void()>& slow = {});
  bool settle();
  void release_proxies(const std::string& slots);
  std::optional<std::string> setslots(const std::vector<std::vector<std::vector<std::string>>>& groups);
  // The proxies' handoff of `slots` (route, then release); how long the call took (ms).
  double route_and_release(const std::string& slots);
  void note_proxy_failures(const ProxyCalls& calls);
  void note_target_refusals(const ProxyCalls& calls);
  bool purge_replica_keys(const Node& master, const std::string& importing_from,
                          const std::vector<Slot>& slots, bool set_importing, std::uint64_t& purged);
  bool clean_source_replicas();
  void rollback();
  // Ends the source's fence: its pause, and the refusal of writes where that replaced the pause.
  bool unpause(Source& source);
  std::chrono::milliseconds learn_timeout() const;
  std::chrono::milliseconds claim_pause() const;
  std::optional<std::string> source_changed(const Source& source, const std::string& info) const;
  std::string copier_failure(Source& source);
  std::optional<std::string> target_replicas_behind(const Batch& batch, Clock::time_point deadline);
  std::string fence_left(const Source& source) const;
  bool refuse_writes(Source& source);
  // Writes and syncs the record of `step` (with `fields`) before the step is taken.
  void journal(MoveStep step, const nlohmann::json& fields = nlohmann::json::object());
  bool open_journal();
  // Where the move is now, told to every observer: `phase` and `line` from the caller, the figures from the
  // copiers and the claims; `batch` of `planned` when a batch begins (0: the last one begun).
  void progress(const char* phase, const std::string& line, std::size_t batch = 0, std::size_t planned = 0);
  // A batch ended (claimed or given up): told to every observer.
  void batch_ended(const Source& source, const Batch& batch);
  nlohmann::json batch_record(const Source& source, const Batch& batch) const;
  bool interrupted();
  void report(bool ok);
  // A lease this run took and may no longer hold, asked of the nodes (MoveLease::confirm): nothing more may
  // change the cluster.
  bool lease_lost() const;
  // Says so in error_, and stops the copiers, sending nothing more.
  void stopped_without_lease();
  bool fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }
  NodeClient* control(const Node& node);

  MoveOptions options_;
  std::ostream& out_;
  std::ostream& err_;
  std::vector<std::unique_ptr<MoveObserver>> observers_;  // what the move says goes to each (move_report.h)
  MoveMetrics* metrics_ = nullptr;                        // of observers_, the --metrics endpoint
  std::pair<std::size_t, std::size_t> progress_batch_{};  // the batch begun last, of how many planned then
  std::string error_;
  int exit_status_ = kExitDone;  // what run() returns (exit_status.h), also in the report
  std::vector<std::string> warnings_;
  std::vector<std::string> notes_;
  Clock::time_point started_ = Clock::now();
  double copy_s_ = 0, cutover_s_ = 0, cleanup_s_ = 0, settle_s_ = 0;

  Topology topology_;
  Node target_;
  HostPort target_address_;
  ServerInfo target_info_;
  NodeClient target_control_;
  NodeFanout target_fanout_;  // for SETSLOT (see setslots())
  bool target_fanout_connected_ = false;
  std::vector<Source> sources_;
  std::vector<Slot> skipped_;                      // already on the target
  std::chrono::milliseconds node_timeout_{15000};  // the target's cluster-node-timeout
  std::vector<bool> importing_ = std::vector<bool>(kSlotCount);
  std::vector<bool> claimed_ = std::vector<bool>(kSlotCount);
  std::map<std::string, NodeClient> controls_;
  std::string connect_error_;  // why control() last returned nullptr
  std::unique_ptr<ProxyControl> proxies_;
  // ProxyControl::warm_up() on a thread of its own from prepare() on; nothing else uses
  // proxies_ until proxies_ready() has waited for it. Its answer: the proxies that refused to check the
  // target (warned of before the first batch).
  std::future<ProxyCalls> warming_;
  ProxyCalls target_refused_;
  double warm_up_ms_ = 0;  // written by the warm-up's thread, read once its future is ready
  void proxies_ready() {
    if (!warming_.valid()) return;
    target_refused_ = warming_.get();
    fleet_call_ms_ = warm_up_ms_;
  }
  std::unique_ptr<MoveLease> lease_;
  std::vector<HostPort> leased_;  // the nodes the lease is on
  std::string owner_;             // names this move's holds on the proxies
  std::optional<PlacedHold> placed_hold_;
  std::optional<PlacedHold> hold_in_force_;
  // The claimed batches under the group's hold whose handoff waits for the group's last batch: indexes into
  // deferred_source_->batches.
  Source* deferred_source_ = nullptr;
  std::vector<std::size_t> deferred_;
  // What hold_span() decides from: the last call to every proxy (the warm-up, a hold, a handoff) and the
  // last batch, from its hold's answer to the end of its verify, less what it waited for calls to every
  // proxy (fleet_waited()). A batch that is handed off alone waits for its handoff; one under a group does
  // not: counted in, the call would make every batch handed off alone look as slow as the call, and the
  // next hold after it span one batch however slow the fleet.
  double fleet_call_ms_ = 0;
  std::optional<double> batch_span_ms_;  // none before the first batch
  double batch_fleet_ms_ = 0;            // since batch_started_: waited for calls to every proxy
  Clock::time_point batch_started_;  // the batch being cut over: its hold answered, its fence about to start
  Clock::time_point hold_started_;   // the current batch's hold was sent
  std::set<std::string> proxy_warned_;
  int journal_fd_ = -1;
  std::string journal_path_;
  bool undo_complete_ = true;  // rollback() undid every slot it had to
  std::string move_id_;        // in every journal record
  // Sizes the batches from what the cutovers so far cost (batch_sizer.h).
  BatchSizer sizer_{options_.max_pause, options_.fence == "proxy"};
  const bool native_ = options_.engine == "native";
};

}  // namespace slotshift
