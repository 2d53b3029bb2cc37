// One move at a time on any node: a lease held in the cluster itself, by the nodes a move changes.
//
// The lease is a connection of slotshift's to each node, named (CLIENT SETNAME)
//
//   slotshift-lease:<move id>:<expiry, unix ms>:<host>
//
// which any client sees in CLIENT LIST. It dies with the process that holds it (the kernel closes a killed
// process's connections), and its expiry covers the rest: a holder whose machine vanished, a partition. The
// holder renews the expiry every ttl/4 from a thread of its own; another slotshift refuses while an unexpired
// lease of someone else is on any of its nodes, naming the holder, and takes over an expired one (CLIENT
// KILL).
//
// A lease ends without its holder knowing when the holder stalls (a stopped process, a paused virtual
// machine, a swap storm) for longer than the ttl: another slotshift (a resume, an abort) takes it over and
// goes on, and the holder wakes up believing it still moves. What keeps the holder from changing the cluster
// after that:
//   - held() is a clock (CLOCK_BOOTTIME, which counts a suspend), not a flag: false, for good, once half the
//     ttl has passed since the start of the last round that renewed the lease on every node. That is before
//     anyone may take it over: its expiry is that round's start plus the ttl, and half the ttl is left for
//     the hosts' clocks to differ;
//   - every connection of the move is named slotshift-move:<lease id>[:role] (move_connection_name,
//     Credentials::client_name), and whoever takes an expired lease over closes the connections so named on
//     that node, the lease's own first, before it changes anything;
//   - every new connection, once named and before anything is sent on it, and the decision to undo, ask
//     confirm(): a renewal on every node, which fails on a connection a takeover closed even if the clock
//     did not count the stall (a host that hides a pause from its guest). A journal record asks held().
// A connection named before the takeover looked is closed by it; one named after it fails the check, as its
// holder has renewed nothing since a whole ttl before the takeover. What is left is the instant between a
// check and the call it guards: a journal record, or a call to a proxy (an HTTP request, which no node can
// close), sent by a holder stalled for a whole ttl exactly there (or, for a journal record, by one whose
// host hid the stall from its clock). The worst a proxy call can do then is release holds the recovery no
// longer needs.
//
// A leased node that does not answer for half the ttl (stopped, partitioned) ends the lease the same way: no
// one can tell from here whether it was taken over meanwhile. The move then stops as a killed one does,
// leaving its journal for resume or abort.
//
// Each mover sets its lease on a node first and looks second, and gives up if it sees any other live lease
// there. Whichever of two movers looks last has set its own lease before that, and the other set its lease
// before its own look, so before this one: it sees it and gives up. At most one goes on; two that ask at the
// same instant may both give up, and then neither moves.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/host_port.h"
#include "orchestrator/node_client.h"

namespace slotshift {

// A lease as a node's CLIENT LIST shows it.
struct LeaseSeen {
  std::string client_id, addr, move_id, host;
  std::int64_t until_ms = 0;  // unix ms
};
// Every slotshift lease on the node `c` is connected to (empty if CLIENT LIST is refused).
std::vector<LeaseSeen> leases_on(NodeClient& c);
// The name of every connection a move or a recovery holding the lease `lease_id` opens.
std::string move_connection_name(std::string_view lease_id);

class MoveLease {
 public:
  MoveLease(std::string move_id, std::chrono::milliseconds ttl, std::chrono::milliseconds timeout,
            Credentials credentials);
  ~MoveLease();
  MoveLease(const MoveLease&) = delete;
  MoveLease& operator=(const MoveLease&) = delete;

  // Takes the lease on every node, or none (error()). On success a thread renews it until release().
  bool acquire(const std::vector<HostPort>& nodes);
  // After an acquire() that took expired leases over: their moves' connections to `others` (the cluster's
  // other nodes: masters a move reads, replicas it cleans) are closed too. A node that cannot be reached
  // is passed over.
  void close_elsewhere(const std::vector<HostPort>& others);
  // False once the lease may have been taken over (see above): a renewal found it gone, or half the ttl has
  // passed since the last round that renewed it everywhere. False for good once false. The move must stop
  // changing the cluster.
  bool held() const;
  // held(), asked of the nodes now: one renewal on every node, before a step that cannot be taken back (an
  // undo, a journal record, a new connection). A clock that did not count a stall (a virtual machine paused
  // by its host) is caught here: a takeover closed the lease's connections.
  bool confirm();
  std::string lost_reason() const;
  // For Credentials::lease_lost: empty while confirm(), the reason after.
  std::function<std::string()> fence();
  void release();
  const std::string& error() const { return error_; }

 private:
  std::string name(std::int64_t until_ms) const;
  void renew_loop();
  // One round on every node (see renew() in the .cc); false once the lease is lost.
  bool renew();
  // The lease set on a new connection to nodes_[i], unless another live lease is there (then lost).
  bool set_again(std::size_t i, std::string& why);
  void lose(std::string why) const;

  std::string move_id_;
  std::chrono::milliseconds ttl_, timeout_;
  Credentials credentials_;
  std::vector<HostPort> nodes_;
  std::mutex conn_mu_;                   // held_: the renewer's rounds and confirm()
  std::vector<NodeClient> held_;         // one per node, named with the lease
  std::vector<std::string> taken_over_;  // the lease ids acquire() took over
  std::string error_;
  mutable std::atomic<bool> lost_{false};
  // CLOCK_BOOTTIME nanoseconds at the start of the last round that renewed the lease on every node
  std::atomic<std::int64_t> renewed_at_ns_{0};
  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  mutable std::string lost_reason_;
  std::thread renewer_;
};

}  // namespace slotshift
