// SlotCopier: everything one source contributes to a move, on a thread of its own. It attaches to the source
// as a replica (ReplicaLink), copies the keys of the moving slots from the snapshot into the target, then
// applies the live write stream for those slots until the controller cuts them over.
//
// Copy: each key of a moving slot becomes `RESTORE-ASKING key ttl payload REPLACE [ABSTTL] [IDLETIME s |
// FREQ f]`, its payload built from the value's bytes exactly as the snapshot has them. The target accepts the
// writes because it has the slots in IMPORTING (set by the controller) and RESTORE-ASKING carries the
// `asking` flag (other commands follow an ASKING);
// the source has no MIGRATING state, so its clients never see ASK. Keys already expired are skipped; keys
// bigger than `big_key` go as chunks of ordinary commands so that no command blocks the target for long.
//
// Follow: every command of the stream whose keys are in a moving slot is sent to the target after ASKING, a
// MULTI ... EXEC block as one unit (one ASKING before MULTI covers the block). Commands whose effects are
// independent per key (DEL, UNLINK, MSET, MSETNX) are split per key. FLUSHALL/FLUSHDB delete the moving
// slots' keys on the target. Everything else (other slots, PING, SELECT, REPLCONF) is dropped.
//
// Repair: a replayed command that fails on the target means its keys differ from the source's. The usual
// cause is TRYAGAIN: with ASKING, a command or transaction naming more than one key is refused while any of
// them is missing on the target (RENAME to a new key, LMOVE, SUNIONSTORE, ...). Then the copier reads those
// keys again from the source in one transaction together with the source's replication offset O
// (MULTI, DUMP k, PEXPIRETIME k, ..., INFO replication, EXEC), restores them on the target, and skips the
// stream's commands on those keys up to O, since their effects are in what it just read. A command up to O
// that touches those keys and others too widens the set, which is read again.
//
// Offsets: the applied offset is the stream offset up to which everything is on the target (or was dropped).
// The controller's cutover waits for it to reach the source's offset during the fence.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/host_port.h"
#include "common/resp.h"
#include "common/slot.h"
#include "orchestrator/node_client.h"
#include "orchestrator/replica_link.h"
#include "orchestrator/target_writer.h"

namespace slotshift {

struct CopierOptions {
  HostPort source;
  HostPort target;
  Credentials credentials;  // for both nodes
  // A diskless snapshot (capa eof: the source's fork streams it, nothing is written to the source's disk),
  // with the source's repl-diskless-sync-delay set to 0 for the instant of the handshake so that it starts at
  // once; or a disk-based one (the source writes an RDB file first, replacing its dump.rdb).
  bool diskless = true;
  std::string announce_version;    // see ReplicaLinkOptions
  std::size_t big_key = 8u << 20;  // values above this many bytes are sent as chunks of commands
  std::size_t chunk_bytes = 512u << 10;
  std::size_t spool_memory = 256u << 20;
  std::string spool_dir = "/tmp";
  std::size_t max_ops_in_flight = 2048;
  std::size_t max_bytes_in_flight = 8u << 20;
  std::chrono::milliseconds timeout{5000};  // control connections, each reply
  std::chrono::seconds idle_timeout{60};    // nothing from the source for this long: the link is dead
};

// What one copier has done so far; read from other threads at any time.
struct CopyStats {
  std::atomic<std::uint64_t> rdb_bytes{0};       // snapshot bytes read
  std::atomic<std::uint64_t> keys_copied{0};     // keys of moving slots sent to the target
  std::atomic<std::uint64_t> bytes_copied{0};    // their value bytes
  std::atomic<std::uint64_t> keys_expired{0};    // keys of moving slots skipped as already expired
  std::atomic<std::uint64_t> keys_chunked{0};    // big keys sent as chunks of commands
  std::atomic<std::uint64_t> keys_seen{0};       // every key of the snapshot
  std::atomic<std::uint64_t> stream_bytes{0};    // stream bytes consumed
  std::atomic<std::uint64_t> stream_applied{0};  // stream operations applied to the target
  std::atomic<std::uint64_t> repairs{0};         // keys read again from the source after a refused command
  std::atomic<std::uint64_t> unknown_commands{0};
  // Writes to slots after their fence (they should not exist: the source was paused, then redirected).
  std::atomic<std::uint64_t> writes_after_fence{0};
  std::atomic<bool> rdb_done{false};
  // Where the copy's time goes, in ms from start(): the snapshot's header arrived (the source's fork and, for
  // a disk-based snapshot, its RDB file are done), its last byte arrived, and the target had applied it all.
  std::atomic<double> header_ms{0}, received_ms{0}, applied_ms{0};
};

class SlotCopier {
 public:
  static constexpr std::int64_t kNever = -1;                                       // slot not in the move
  static constexpr std::int64_t kOpen = std::numeric_limits<std::int64_t>::max();  // moving, not cut over

  SlotCopier(CopierOptions options, const std::vector<Slot>& slots);
  ~SlotCopier();

  // Connects the control connections and the target writer and performs the replica handshake; then the
  // thread copies and follows. False (error()) if any of that fails.
  bool start();
  // Stops the thread and closes every connection.
  void stop();

  // Set only by the controller, during a batch's fence: commands of these slots up to `offset` are applied,
  // later ones dropped. reopen() undoes it when the batch is abandoned before its claim.
  void close_slots(const std::vector<Slot>& slots, std::int64_t offset);
  void reopen_slots(const std::vector<Slot>& slots);

  std::int64_t applied_offset() const { return applied_.load(std::memory_order_acquire); }
  std::int64_t received_offset() const { return link_.received_offset(); }
  // Waits until the applied offset reaches `offset`. False on failure or at the deadline.
  bool wait_applied(std::int64_t offset, Clock::time_point deadline) const;
  // Bytes received from the source and not yet applied, and how long the oldest of them has waited.
  std::uint64_t lag_bytes() const;
  double lag_seconds() const;
  std::uint64_t spooled_bytes() { return link_.spool().spilled(); }
  std::uint64_t spool_peak() { return link_.started() ? link_.spool().peak_spilled() : 0; }

  // Set when the thread stopped on an error.
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  std::string error() const;
  // The first write the source accepted for a slot after that slot's fence ("SET key"), if any.
  std::string first_late_write() const {
    std::lock_guard lock(error_mu_);
    return first_late_write_;
  }

  const CopyStats& stats() const { return stats_; }
  // The replication id the source gave at +FULLRESYNC (set once the snapshot has begun).
  const std::string& replid() const { return link_.replid(); }
  // Per slot, from the snapshot: keys copied, their bytes, and how many keys could expire in it (copied with
  // a TTL, skipped as expired, or given an expiry by the stream): what the fence's key count check tolerates.
  std::uint64_t slot_keys(Slot s) const { return slot_keys_[s].load(std::memory_order_relaxed); }
  std::uint64_t slot_bytes(Slot s) const { return slot_bytes_[s].load(std::memory_order_relaxed); }
  std::uint64_t slot_expiring(Slot s) const { return slot_expiring_[s].load(std::memory_order_relaxed); }
  const HostPort& source() const { return options_.source; }
  const std::vector<Slot>& slots() const { return slots_; }
  int rdb_version() const { return rdb_version_.load(); }

 private:
  struct Op;
  struct Parsed {
    std::string_view wire;
    std::vector<std::string_view> args;
  };
  void run();
  void dropped(const Parsed& command);
  bool copy_snapshot();
  bool follow_stream();
  bool process(const Parsed& command);
  bool apply_transaction();
  bool apply_commands(const std::vector<Parsed>& commands);
  bool submit(Op op, std::string_view wire, std::uint32_t replies);
  bool handle_failures();
  bool repair(const std::set<std::string>& keys);
  bool flush_moving_slots();
  bool drain();
  bool active(Slot s, std::int64_t offset_end) const {
    return offset_end <= stop_at_[s].load(std::memory_order_acquire);
  }
  void set_applied(std::int64_t offset);
  void finish(std::string error);

  CopierOptions options_;
  std::vector<Slot> slots_;
  ReplicaLink link_;
  TargetWriter writer_;
  std::unique_ptr<class NodeClient> source_control_;
  std::unique_ptr<class NodeClient> target_control_;
  std::array<std::atomic<std::int64_t>, kSlotCount> stop_at_;
  std::vector<std::atomic<std::uint64_t>> slot_keys_, slot_bytes_, slot_expiring_;
  std::atomic<int> rdb_version_{0};

  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> failed_{false};
  mutable std::mutex error_mu_;
  std::string error_;
  std::string first_late_write_;
  CopyStats stats_;
  std::atomic<std::int64_t> applied_{0};
  Clock::time_point started_;

  // Copier thread only.
  std::deque<Op> ops_;        // submitted, in order, waiting for their outcome
  std::vector<Op> failures_;  // refused by the target, to repair
  std::vector<Op> tainted_;   // applied after a refusal, before the repair
  std::uint64_t next_tag_ = 1;
  std::int64_t pos_ = 0;       // stream offset after the last command consumed
  std::int64_t boundary_ = 0;  // offset after the last command outside a transaction
  // ACKs to the source never reach past where the first write slotshift did not apply began (set_applied()).
  std::int64_t ack_cap_ = std::numeric_limits<std::int64_t>::max();
  bool applying_transaction_ = false;
  bool in_transaction_ = false;
  std::vector<std::string> transaction_;  // the queued commands' bytes, until EXEC
  std::string stream_head_;               // stream bytes that came with the end of the snapshot
  // Keys read again from the source, each with the source's offset at that read: their commands up to it are
  // in what was restored.
  std::map<std::string, std::int64_t> skip_;
  resp::Scanner tx_scanner_;  // parses the commands of a transaction

  // Lag: (time, received offset) samples, oldest first.
  mutable std::mutex lag_mu_;
  mutable std::deque<std::pair<Clock::time_point, std::int64_t>> lag_samples_;
};

}  // namespace slotshift
