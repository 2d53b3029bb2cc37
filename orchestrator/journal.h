// A move's journal: one JSON record per line, each written and synced before the step it names is acted on
// (MoveJob::journal()), every record carrying {"version": 1, "move": <move id>, "step": ..., "time_ms": ...}.
// The records a move writes, in order:
//
//   plan            target (id, address), sources (id, address, slots), the proxies and their hold owner, the
//                   engine
//   importing       IMPORTING set on the target for every slot of the plan
//   copy, copied    a source's copy starts; every snapshot is in and the stream is followed
//   fence           a batch's fence is up: source, slots, offset, whether the source is paused
//   refuse-writes   the source's min-replicas-* are about to be raised; "restore" holds the values to put
//   back claim           a batch's claim is about to be sent (offset, the source's replication id)
//   claim-failed, claim-settled, claim-unknown
//                   a claim that failed, and which of its slots the target owns by its own word
//   claimed         a batch is the target's and the source knows it
//   migration-log, migrate, migrated, migrate-failed, migrate-cancelled
//                   --engine native: a node's cluster-slot-migration-log-max-len is about to be shortened
//                   ("restore" holds the value to put back); a batch's CLUSTER MIGRATESLOTS and its outcome
//   source-not-learnt, target-failed-over, rolled-back, replicas-cleaned
//   done            the move ended well;  aborted  slotshift abort (or resume), or the move itself after a
//                   failure, undid what was not claimed ("complete": false when something is left to undo)
//
// read_journal() rebuilds the last move of a file from them: what it planned, what it claimed, what it
// changed that must be put back. The nodes have the last word on ownership; the journal says where to look
// and what the original settings were.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/slot.h"

namespace slotshift {

inline constexpr int kJournalVersion = 1;

// The states of a move, as its journal names them (the "step" of each record, above). A record is written and
// synced before the state it names is entered; the fault injection names the same steps.
enum class MoveStep {
  kPlan,
  kImporting,
  kCopy,
  kCopied,
  kFence,
  kRefuseWrites,
  kClaim,
  kClaimFailed,
  kClaimSettled,
  kClaimUnknown,
  kClaimed,
  kSourceNotLearnt,
  kTargetFailedOver,
  kRolledBack,
  kReplicasCleaned,
  kDone,
  // --engine native
  kMigrationLog,
  kMigrate,
  kMigrateCancelled,
  kMigrateFailed,
  kMigrated,
  // slotshift abort and resume
  kAbortStarted,
  kResumeStarted,
  kAborted,
};

const char* step_name(MoveStep step);
// nullopt for a name no version of this journal writes.
std::optional<MoveStep> parse_step(std::string_view name);

struct JournalSource {
  std::string id, address;
  std::vector<Slot> slots;
};

struct JournalState {
  std::string move_id;
  std::string engine = "replica";  // or "native"
  std::string target_id, target_address;
  std::vector<JournalSource> sources;
  std::vector<std::string> proxies;  // admin endpoints, HOST:PORT
  std::string proxy_owner;           // the hold owner on them
  std::set<Slot> claimed;            // claimed per the journal (the nodes are asked anyway)
  // Per source id: min-replicas-to-write and min-replicas-max-lag as they were before the move raised them.
  std::map<std::string, std::pair<std::string, std::string>> restore_min_replicas;
  // --engine native, per node id: cluster-slot-migration-log-max-len as it was before the move shortened it.
  std::map<std::string, std::string> restore_migration_log;
  std::string last_step;
  bool finished = false;       // done or aborted
  std::size_t torn_lines = 0;  // lines that are not whole records (a crash while writing the last one)
};

// The last move recorded in `path`; nullopt with `error` when the file cannot be read or holds no plan.
std::optional<JournalState> read_journal(const std::string& path, std::string& error);

// Where journals go when --journal is not given: $SLOTSHIFT_STATE_DIR, else /var/lib/slotshift for root and
// $HOME/.local/state/slotshift for others.
std::string journal_dir();
// Every journal in journal_dir(), newest first; `error` set when the directory cannot be read.
std::vector<std::string> all_journals(std::string& error);
// Whether the last record of `path` ends the move the file is named after (move-<pid>-<ms>.journal): "done",
// or an "aborted" that undid everything, in a file that holds that move's plan alone. Parses that record
// only. False when that cannot tell (a torn last record, another move's record, a second plan):
// read_journal() then decides. A true here is what read_journal() would say: with one plan, the file's move
// is the one it is named after, and its last record ends it.
bool ends_its_own_move(const std::string& path);
// Those whose move has not finished (killed, or its undo incomplete), newest first.
std::vector<std::string> unfinished_journals(std::string& error);
// The newest journal in journal_dir() whose move has not finished, or "" (with `error` saying why).
std::string latest_unfinished_journal(std::string& error);

}  // namespace slotshift
