// slotshift move: moves hash slots to a target master by replication, one short fenced cutover per batch.
//
//   plan      survey every node; refuse a cluster that is not clean (open slots, failing nodes, equal config
//             epochs, disagreeing views), a target that is not a master or holds keys of the moving slots,
//             and a source whose values the target cannot read
//   prepare   CLUSTER SETSLOT s IMPORTING <source> on the target only: the target accepts writes to s after
//             ASKING, and the source, which is left untouched, serves s as before and sends no client ASK
//   copy      one SlotCopier per source: replica link, snapshot, RESTOREs, then the live stream
//   cutover   per batch (slots of one source, sized so the source's pause stays within --max-pause):
//               CLIENT PAUSE WRITE on the source; its offset X; wait until the target has applied X; compare
//               the slots' key counts on both; CLUSTER SETSLOT s NODE <target> on the target (the first one
//               bumps its config epoch and broadcasts); wait until the source knows; CLIENT UNPAUSE
//             On servers that crash when they learn the claim while paused
//             (ServerInfo::survives_paused_claim), the pause ends just before the claim instead.
//   verify    per batch: every node names the target as owner, the target's epoch is the largest and unique,
//             no slot is left open
//
// With --engine native (Valkey 9 and later) the servers move each batch themselves (CLUSTER MIGRATESLOTS, see
// native_migration.h): slotshift sizes the batches so that the source's delete of the moved keys stays within
// --max-pause, holds and routes the proxies at each handoff, verifies, and cancels the job on a failure.
//
// Any failure before a batch's claim undoes what the move did for the slots not yet claimed: the source is
// unpaused, the copied keys are deleted from the target and IMPORTING is cleared. Claimed batches stay moved.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "common/host_port.h"

#include "orchestrator/commands.h"

namespace slotshift {

struct MoveOptions {
  CommonOptions common;
  std::string slots;  // "0-1000,5000"
  std::string to;     // HOST:PORT or node id (or a unique prefix of one)
  std::chrono::milliseconds max_pause{50};
  std::string fence = "source-pause";  // or "proxy": only the proxies hold, the source is never paused
  // "replica": slotshift's own replica link and cutover; "native": the servers' CLUSTER MIGRATESLOTS
  // (Valkey 9 and later), one job per batch.
  std::string engine = "replica";
  std::vector<HostPort> proxies;    // admin endpoints of slotshift-proxy (--proxy)
  std::vector<HostPort> proxy_dns;  // names whose every address is a proxy (--proxy-dns)
  std::string proxy_token;          // their admin token
  std::string journal;  // append every step to this file before taking it (default: one in journal_dir())
  bool dry_run = false;
  std::size_t big_key = 8u << 20;
  bool diskless = true;  // --snapshot diskless (default) or disk
  std::size_t spool_memory = 256u << 20;
  std::string spool_dir = "/tmp";
  // The longest CLIENT PAUSE a cutover asks for: if the orchestrator dies mid-cutover, the source's writes
  // resume by themselves after this.
  std::chrono::milliseconds pause_timeout{2000};
  // How many batches one hold of the proxies spans (--hold-batches): 0 for auto (orchestrator/hold_span.h).
  int hold_batches = 0;
  // Progress on stderr: a line that replaces itself on a terminal; elsewhere (a file, a Job's log) a line
  // with the time at each phase and at most one every progress_interval in between.
  bool progress = true;
  std::chrono::milliseconds progress_interval{10000};
  // --metrics: where the running move's figures are served (move_metrics.h); none when unset.
  std::optional<HostPort> metrics;
  // The move lease on every node the move changes (move_lease.h): renewed every third of this while the move
  // runs; another slotshift may take it over once it has not been renewed for this long.
  std::chrono::milliseconds lease_ttl{30000};
};

int run_move(const MoveOptions& options, std::ostream& out, std::ostream& err);
// After a crash: the move of `options.journal` (or of the newest unfinished journal in journal_dir()), its
// unclaimed part undone (abort), or undone and then moved again (resume). See MoveJob::recover().
int run_abort(const MoveOptions& options, std::ostream& out, std::ostream& err);
int run_resume(const MoveOptions& options, std::ostream& out, std::ostream& err);

}  // namespace slotshift
