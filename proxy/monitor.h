// A client's MONITOR: one connection of its own to every master of the cluster (counted with
// max-blocking-connections, logged in as the client with ACL pass-through), each in MONITOR mode, and every
// line the masters send passed on to the client as it arrives, whole, marked with the node it ran on.
//
// The line keeps Redis's shape, so that clients' monitor parsers still read it, with the node put inside the
// brackets before the client's address:
//
//   +1700000000.123456 [0 node=127.0.0.1:7000 127.0.0.1:51234] "set" "k" "v"
//
// What the proxy has to say about a node's stream is a line of the same shape, from the client
// "slotshift-proxy:0", whose first argument is "slotshift-proxy":
//
//   "monitor-interrupted" "<why>"   commands on the node may go unseen from here (its connection failed, or
//                                   could not be opened) until the node's next "monitor-resumed"
//   "monitor-resumed"               the node's stream is back (a new connection in MONITOR mode)
//   "monitor-started"               a master that joined the cluster after MONITOR is watched from here
//   "monitor-stopped" "<why>"       the node is no longer a master: nothing more comes from it
//
// A failed connection is opened again after a backoff (100 ms doubling to 5 s); its reserved place among
// max-blocking-connections is kept meanwhile, so that other clients cannot take it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/host_port.h"
#include "proxy/request.h"

namespace slotshift::proxy {

class Backend;
class Session;
class Worker;

class Monitor {
 public:
  Monitor(Session& session, Worker& worker);
  ~Monitor();
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // MONITOR: opens a connection to every master. `request` (queued in the client's order) is answered +OK
  // once every one of them is in MONITOR mode (or failed: its stream starts interrupted), with the error a
  // node gave if one refused MONITOR (NOPERM: nothing is monitored then), or at once with the
  // max-blocking-connections error when the cap leaves no connection for every master.
  void start(const RequestPtr& request);
  // Whether the client is in monitor mode (from MONITOR until RESET, or until a node refused it).
  bool active() const { return active_; }
  // The slot map changed: a master that joined gets a connection; one that is no longer a master loses its.
  void owners_changed();
  // Failed connections are reported and opened again after their backoff, and connections that did not
  // reach MONITOR mode in time are given up.
  void check(std::uint64_t now_ms);
  // Closes every connection (RESET, or the client left). The pending +OK, if any, is answered first.
  void close();

 private:
  struct Link {
    HostPort node;
    std::unique_ptr<Backend> backend;  // null while waiting to be opened again
    bool reserved = false;             // counted in Proxy::blocking_connections
    bool confirmed = false;            // the node answered MONITOR's +OK on this connection
    bool failed = false;               // set inside the connection's callbacks; acted on at check()
    bool interrupted = false;          // a "monitor-interrupted" line went out; "monitor-resumed" is due
    bool joined_late = false;          // a master that joined after MONITOR: "monitor-started" is due
    std::string why;                   // what failed, for the "monitor-interrupted" line
    std::uint64_t opened_ms = 0;
    std::uint64_t retry_at_ms = 0;
    std::uint64_t backoff_ms = 0;
  };

  // Opens the link's connection and sends MONITOR; false when it could not even start.
  bool open(Link& l);
  // Closes the link's connection (freed at the worker's next tick: this may run inside its callback).
  void close_backend(Link& l);
  void drop_link(std::map<std::string, Link>::iterator it);
  void on_message(const std::string& key, std::string_view message);
  static std::string node_said(const std::string& error);
  // The link's connection is gone: tells the client (once per interruption) and schedules a new one.
  void interrupted(Link& l, std::string why, std::uint64_t now_ms);
  // A line of the proxy's own about `node`: `event` and, if any, `detail`.
  void note(const HostPort& node, std::string_view event, std::string_view detail = {});
  // A line for the client: now, or once MONITOR is answered.
  void emit(std::string line);
  // Answers MONITOR once no link is still on its way to MONITOR mode.
  void maybe_confirm();

  Session& session_;
  Worker& worker_;
  std::map<std::string, Link> links_;  // by node "HOST:PORT"
  RequestPtr confirm_;                 // MONITOR's request, until answered
  std::vector<std::string> early_;     // lines that came before it was answered (emit())
  std::size_t early_bytes_ = 0;
  bool active_ = false;
  bool masters_changed_ = false;  // owners_changed() came: check() compares the links with the masters
};

}  // namespace slotshift::proxy
