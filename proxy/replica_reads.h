// Reads from replicas (--read-from replica | prefer-replica), for one worker: which requests may run on a
// replica of their slot's master, which replica they go to, what a replica's refusal means, and which
// replicas are left alone for a while after failing.
//
// Only read-only commands with keys qualify: the command table flags them readonly and not write (what
// Request::idempotent says), they are not blocking, not Pub/Sub, not part of MULTI/EXEC or WATCH, not sent
// to a fixed node (fan-out, SCAN), and no replica has redirected them yet. EVAL and FCALL are not read-only;
// EVAL_RO and FCALL_RO are. Worker::dispatch also keeps on masters the reads of a client between WATCH and
// EXEC, and of a client that sent READWRITE.
//
// Consistency: a replica applies its master's writes a little after the master has answered them. So a
// read on a replica may miss the client's own write that came back OK just before (no read-your-writes), may
// be behind the master by the replication delay, and two reads on two replicas may see the newer value
// first and the older one after. The proxy refuses WAIT (its node connections carry every client's writes),
// so a client that must read its own writes sends READWRITE: its reads stay on masters (Session).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/host_port.h"
#include "common/slot.h"
#include "common/topology.h"
#include "proxy/config.h"
#include "proxy/login.h"
#include "proxy/request.h"

namespace slotshift::proxy {

class Backend;
class Worker;

// How long a replica that failed (its connection lost or refused, LOADING, MASTERDOWN) is not chosen.
inline constexpr std::uint64_t kReplicaCooldownMs = 5000;
// How long after the proxy learns that a slot changed owner its reads stay on the master: the new owner's
// replicas may not have the slot's keys yet, and the old owner's answer MOVED.
inline constexpr std::uint64_t kSlotSettleMs = 1000;

class ReplicaReads {
 public:
  ReplicaReads(Worker& worker, Config::ReadFrom mode) : worker_(worker), mode_(mode) { changed_ms_.fill(0); }

  bool enabled() const { return mode_ != Config::ReadFrom::kMaster; }
  // Whether `request` may run on a replica (see above); false with --read-from master.
  bool eligible(const Request& request) const;

  // Where an eligible request for a slot of `master` (the slot map's connection, the proxy's own login) goes:
  // a replica's connection, logged in as the request's user; or null for the master. Null with `wait` set
  // means it may not go to the master (--read-from replica) and no replica is usable now: `wait` says why.
  Backend* pick(const Request& request, Backend* master, std::string& wait);

  // A replica's error reply for `request` (request.replica): a MOVED or ASK (the slot is not its master's),
  // LOADING or MASTERDOWN (it cannot serve reads now). Sends the request on where it belongs and returns
  // true; false for any other error, which is the command's own.
  bool refused(const RequestPtr& request, std::string_view error);

  // The slot map was loaded: `topology` (ports as the proxy connects), `masters[i]` the connection of
  // topology.nodes[i] when that is a master with slots. Replicas that are failing or have no address are
  // left out, and each other one is asked ROLE: it is read from once it says it is connected to its master.
  void topology_loaded(const Topology& topology, const std::vector<Backend*>& masters);
  // `slot` now has another owner than before (a MOVED, a ROUTE, a reload): its reads stay on the master for
  // kSlotSettleMs.
  void owner_changed(Slot slot);
  // The connection to a replica failed (or the replica answered LOADING or MASTERDOWN on it): not chosen for
  // kReplicaCooldownMs.
  void failed(const Backend* replica);

 private:
  struct Shard {
    std::vector<Backend*> replicas;  // their connections as the proxy's own login (Worker::replica_backend)
    std::size_t next = 0;            // round robin among replicas equally loaded
  };

  Worker& worker_;
  Config::ReadFrom mode_;
  std::unordered_map<const Backend*, Shard> shards_;  // by the master's connection
  // Replicas (their own-login connections) that said at the last reload that they are connected to their
  // master (ROLE); absent until they answer.
  std::unordered_map<const Backend*, bool> synced_;
  std::unordered_map<const Backend*, std::uint64_t> down_ms_;  // replica connection -> when it failed
  std::array<std::uint64_t, kSlotCount> changed_ms_;  // loop time of the slot's last owner change; 0: none
};

}  // namespace slotshift::proxy
