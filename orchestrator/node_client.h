// A blocking control connection from the orchestrator to one cluster node, plain or TLS (a Socket, and
// common/resp's scanner and decoder for the replies). Every call has a deadline; failures are values (a
// message a user can act on), never exceptions.
//
// Why not hiredis: Debian 12's libhiredis (0.14) has no TLS, and a cluster may accept TLS connections only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/host_port.h"
#include "common/resp.h"
#include "common/tls_context.h"
#include "orchestrator/socket.h"

namespace slotshift {

// What every connection to a node presents: AUTH with a password alone (the default user) or an ACL user and
// its password, and TLS when the nodes speak it.
struct Credentials {
  std::string user;
  std::string password;  // empty: no AUTH
  // nullptr: plain TCP. Shared by every connection of the run (the context is built once, at start).
  std::shared_ptr<const TlsContext> tls;
  // Set by a move (and its recovery) for every connection it opens (move_lease.h): each is named
  // (CLIENT SETNAME `client_name`) so that a move taking over its expired lease can close them, and each is
  // refused once opened if `lease_lost` says why (a non-empty reason) before anything is sent on it.
  std::string client_name;
  std::function<std::string()> lease_lost;
};

// What a connection opened with `credentials` may not be used for: empty, or the reason (a lost move lease).
std::string refused_by_lease(const Credentials& credentials);

// A node's error reply while it reads its dataset into memory.
inline bool is_loading(const resp::Value& reply) {
  return reply.is_error() && reply.str.starts_with("LOADING");
}

class NodeClient {
 public:
  NodeClient() = default;
  NodeClient(NodeClient&& other) noexcept = default;
  NodeClient& operator=(NodeClient&& other) noexcept = default;
  NodeClient(const NodeClient&) = delete;
  NodeClient& operator=(const NodeClient&) = delete;

  // Connects (and, with credentials.tls, completes the TLS handshake) within `timeout` and authenticates;
  // later calls use the same timeout per reply: a reply may take longer as long as bytes of it keep coming
  // within it. False (see error()) on failure, a refused AUTH included.
  bool connect(const HostPort& node, std::chrono::milliseconds timeout, const Credentials& credentials = {});
  // Sends one command and waits for its reply. nullopt on a connection failure or timeout; a Redis error
  // reply is a Value whose is_error() is true.
  std::optional<resp::Value> command(const std::vector<std::string>& args);
  // command(), asked again every 50 ms while the node answers LOADING (it is reading its dataset: after a
  // restart, or a full sync from a new master), until `deadline`. The last reply either way: a LOADING error
  // past the deadline tells the caller the node is still loading (is_loading()).
  std::optional<resp::Value> command_when_loaded(const std::vector<std::string>& args,
                                                 std::chrono::steady_clock::time_point deadline);
  // Sends every command at once, then reads their replies in order (one round trip for all). nullopt on a
  // connection failure or timeout.
  std::optional<std::vector<resp::Value>> pipeline(const std::vector<std::vector<std::string>>& commands);

  const std::string& error() const { return error_; }
  const HostPort& node() const { return node_; }
  // False once the connection has failed (a timeout included): a reply may still be on its way, so nothing
  // read on it afterwards could be matched to its command.
  bool usable() const { return socket_.is_open(); }

 private:
  friend class NodeFanout;
  // Queues a command without sending it.
  void append(const std::vector<std::string>& args);
  bool flush();  // sends what is queued
  std::optional<resp::Value> read_reply(const std::string& what);
  // Records the failure (error()) and closes the connection.
  void fail(const std::string& what, std::string reason);

  HostPort node_;
  Socket socket_;
  std::chrono::milliseconds timeout_{2000};
  std::string out_;  // commands queued, not yet sent
  std::string in_;   // bytes received, from in_offset_ on not yet a whole reply
  std::size_t in_offset_ = 0;
  resp::Scanner scanner_{resp::Scanner::Mode::kReply};
  std::uint64_t replies_ = 0;  // replies read on this connection
  std::string error_;
};

// Several connections to one node, for commands the server answers one at a time per connection after a wait
// of its own. Valkey 8 and later replicate every CLUSTER SETSLOT to the node's replicas first and answer once
// they have it: on one connection a thousand SETSLOTs take a thousand replication round trips (about 6 s on
// Valkey 9.1 with one replica), on a hundred connections ten.
class NodeFanout {
 public:
  // `name` (CLIENT SETNAME) tells the connections apart in the node's CLIENT LIST.
  bool connect(const HostPort& node, std::chrono::milliseconds timeout, const Credentials& credentials,
               std::size_t connections, const std::string& name = "");
  // Runs each group of commands in order on one connection, the groups spread over the connections, all at
  // once. The replies, group by group. nullopt (error()) when a connection fails.
  std::optional<std::vector<std::vector<resp::Value>>> run(
      const std::vector<std::vector<std::vector<std::string>>>& groups);
  const std::string& error() const { return error_; }

 private:
  std::vector<NodeClient> clients_;
  std::string error_;
};

// A connection as a line of a node's CLIENT LIST shows it: the fields slotshift reads (a move's leases and
// the connections it names, move_lease.h; the claim's fault injection).
struct ClientSeen {
  std::string id, addr, name;
};
// The connections of a CLIENT LIST reply, one per line.
std::vector<ClientSeen> clients_in(const std::string& client_list);

}  // namespace slotshift
