// One move at a time on any node: a lease held in the cluster itself, by the nodes a move changes.
//
// The lease is a connection of slotshift's to each node, named (CLIENT SETNAME)
//
//   slotshift-lease:<move id>:<expiry, unix ms>:<host>
//
// which any client sees in CLIENT LIST. It dies with the process that holds it (the kernel closes a killed
// process's connections), and its expiry covers the rest: a holder whose machine vanished, a partition. The
// holder renews the expiry every ttl/3 from a thread of its own; another slotshift refuses while an unexpired
// lease of someone else is on any of its nodes, naming the holder, and takes over an expired one (CLIENT
// KILL).
//
// Each mover sets its lease on a node first and looks second, and gives up if it sees any other live lease
// there. Whichever of two movers looks last has set its own lease before that, and the other set its lease
// before its own look, so before this one: it sees it and gives up. At most one goes on; two that ask at the
// same instant may both give up, and then neither moves.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
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

class MoveLease {
 public:
  MoveLease(std::string move_id, std::chrono::milliseconds ttl, std::chrono::milliseconds timeout,
            Credentials credentials);
  ~MoveLease();
  MoveLease(const MoveLease&) = delete;
  MoveLease& operator=(const MoveLease&) = delete;

  // Takes the lease on every node, or none (error()). On success a thread renews it until release().
  bool acquire(const std::vector<HostPort>& nodes);
  // False once a renewal found the lease gone (taken over after it expired, or a node unreachable for longer
  // than the ttl): the move must stop changing the cluster.
  bool held() const { return !lost_.load(); }
  std::string lost_reason() const;
  void release();
  const std::string& error() const { return error_; }

 private:
  std::string name(std::int64_t until_ms) const;
  void renew_loop();

  std::string move_id_;
  std::chrono::milliseconds ttl_, timeout_;
  Credentials credentials_;
  std::vector<HostPort> nodes_;
  std::vector<NodeClient> held_;  // one per node, named with the lease
  std::string error_;
  std::atomic<bool> lost_{false};
  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::string lost_reason_;
  std::thread renewer_;
};

}  // namespace slotshift
