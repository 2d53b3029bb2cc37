// A scripted Redis Cluster for tests of the proxy, in-process and on loopback only: N fake masters, each on
// 127.0.0.1 at an ephemeral port and served by a thread of its own, splitting the 16384 slots evenly.
//
// - CLUSTER SHARDS, CLUSTER SLOTS and CLUSTER NODES describe the N masters as a real cluster would.
// - Every other command is answered by a script (by default a tiny key/value store per node, see
//   store_reply), after the node checks, as a real one does, that the command's keys are in one slot and that
//   it owns that slot (CROSSSLOT, MOVED otherwise; ASKING lets the next command through). MULTI, EXEC,
//   DISCARD and ASKING are connection state, answered by the node itself.
// - Rules make a node answer the next command(s) of a name with given bytes (an error such as -TRYAGAIN or
//   -MOVED, a huge or deeply nested reply, garbage), late, or not at all and close the connection. They are
//   what a real cluster will not produce on demand.
// - Every command each node receives is recorded, in order.
//
// The script and the rules may be changed while the cluster serves; each command sees them as they are when
// it is read. The script runs on the node's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/host_port.h"
#include "common/slot.h"

namespace slotshift::test {

class ScriptedCluster {
 public:
  using Argv = std::vector<std::string>;
  // The raw RESP bytes `node` answers `argv` with (argv[0] as the client sent it, any case).
  using Script = std::function<std::string(int node, const Argv& argv)>;
  static constexpr int kAnyNode = -1;

  // What a node does instead of its usual answer, for the next `times` commands that match.
  struct Rule {
    std::string command;  // lower-case name; "" matches all but CLUSTER and (P|S)(UN)SUBSCRIBE
    int node = kAnyNode;
    int times = 1;
    std::string reply;                   // raw RESP sent instead of the usual answer; "" keeps the usual one
    std::chrono::milliseconds delay{0};  // before the reply goes out (later replies queue behind it)
    bool close = false;                  // after `reply` (if any), close the connection
  };

  explicit ScriptedCluster(int nodes = 3);
  ~ScriptedCluster();
  ScriptedCluster(const ScriptedCluster&) = delete;
  ScriptedCluster& operator=(const ScriptedCluster&) = delete;

  int size() const { return static_cast<int>(nodes_.size()); }
  HostPort address(int node) const;
  std::vector<HostPort> addresses() const;
  // The node that owns `slot`, and a node's range.
  int owner(Slot slot) const;
  Slot first_slot(int node) const;
  Slot last_slot(int node) const;

  // Replaces the script; an empty function brings back store_reply.
  void set_script(Script script);
  // The default script: for GET, SET, DEL, UNLINK, MGET, MSET, EXISTS, TOUCH, INCR, DBSIZE, KEYS, SCAN,
  // FLUSHALL, FLUSHDB, PING and ECHO, what Redis answers from a store of strings kept per node; for any other
  // command the bulk string "<command> <first argument>" (lower-case command), so a client can tell each
  // reply is its own.
  std::string store_reply(int node, const Argv& argv);
  // Whether nodes answer MOVED/CROSSSLOT for keys they do not own (on by default).
  void set_slot_checks(bool on) { slot_checks_ = on; }

  void add_rule(Rule rule);
  // Shorthands. `error` is the message without '-' and CRLF: "TRYAGAIN ...", "MOVED 42 127.0.0.1:7001".
  void fail(std::string command, std::string_view error, int times = 1, int node = kAnyNode);
  void delay(std::string command, std::chrono::milliseconds delay, int times = 1, int node = kAnyNode);
  void close_connection(std::string command, int times = 1, int node = kAnyNode);
  void huge_reply(std::string command, std::size_t bytes, int times = 1, int node = kAnyNode);
  // Rules that still have uses left.
  std::size_t rules_left() const;

  // Every command `node` received, in order (ASKING, MULTI, CLUSTER ... included); with a name, only those.
  std::vector<Argv> received(int node) const;
  std::vector<Argv> received(int node, std::string_view command) const;
  // Off: nothing is kept (long fuzz runs).
  void set_recording(bool on) { recording_ = on; }
  // Client connections open at the nodes right now.
  std::size_t connections() const;

  // Back to a fresh cluster: every client connection closed (with what it had sent but not yet had answered,
  // and any connection still waiting to be accepted), then empty stores, logs and rules and the default
  // script. False if a node did not close its connections within `deadline`.
  bool reset(std::chrono::milliseconds deadline = std::chrono::milliseconds(2000));

  // Reply builders.
  static std::string error(std::string_view message);
  static std::string bulk(std::string_view s);
  static std::string huge_bulk(std::size_t bytes);
  // `depth` arrays of one element each around "+x".
  static std::string nested_array(std::size_t depth);

 private:
  struct Node;
  struct Conn;
  struct Outgoing;

  void serve(Node& node);
  // Answers one command on `conn` (queues what goes out, and when).
  void on_command(Node& node, Conn& conn, Argv argv);
  // What the node answers when no rule applies (with its connection's MULTI and ASKING state).
  std::string answer(Node& node, Conn& conn, const Argv& argv, const std::string& name);
  // MOVED/CROSSSLOT when the command's keys are not this node's to serve; "" when they are.
  std::string check_slots(const Node& node, const Argv& argv) const;
  std::string run_script(int node, const Argv& argv);
  std::string cluster_reply(const Node& node, const Argv& argv) const;
  bool take_rule(int node, const std::string& name, Rule& out);

  std::vector<std::unique_ptr<Node>> nodes_;
  mutable std::mutex mutex_;  // guards rules_ and script_
  std::vector<Rule> rules_;
  std::shared_ptr<const Script> script_;
  std::atomic<bool> slot_checks_{true};
  std::atomic<bool> recording_{true};
};

// A free loopback port for a server that binds it with SO_REUSEPORT, as the proxy's workers do. The port
// stays bound here (not listening, so no connection comes here) for as long as this object lives: nothing
// else can take it between reserving it and the server's start, nor between two servers started on it in
// turn.
class PortReservation {
 public:
  PortReservation();
  ~PortReservation();
  PortReservation(const PortReservation&) = delete;
  PortReservation& operator=(const PortReservation&) = delete;
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A non-blocking TCP connection to 127.0.0.1:`port`, connected within `timeout`, with TCP_NODELAY; -1 if not.
int connect_loopback(int port, std::chrono::milliseconds timeout);

// A plain blocking client connection on loopback, every wait bounded by the timeout given at construction.
class TestClient {
 public:
  explicit TestClient(int port, std::chrono::milliseconds timeout = std::chrono::milliseconds(2000));
  ~TestClient();
  TestClient(const TestClient&) = delete;
  TestClient& operator=(const TestClient&) = delete;

  bool connected() const { return fd_ >= 0; }
  // False if the bytes could not all be written in time.
  bool send_raw(std::string_view bytes);
  bool send(const std::vector<std::string_view>& argv);
  // The bytes of the next whole reply; "" if none came in time or the connection closed first.
  std::string read_reply();
  // send() then read_reply().
  std::string command(const std::vector<std::string_view>& argv);

 private:
  int fd_ = -1;
  std::chrono::milliseconds timeout_;
  std::string in_;
};

}  // namespace slotshift::test
