// CLIENT TRACKING through the proxy. A node tracks what a connection read (or, in BCAST mode, the key
// prefixes it named) and sends that connection an invalidation push when one of those keys changes. The
// proxy's shared connections carry every client's reads, so a tracking client runs its commands on
// connections of its own instead, one per master, each set up with the client's CLIENT TRACKING options
// before it carries anything (counted with max-blocking-connections). The nodes' invalidations come back on
// them and go to the client as pushes, in their place after the replies the same connection sent before them.
//
// What one Redis would tell the client but no single node can, the proxy says itself with a flush of the
// whole cache (an invalidation with a null key list, as after FLUSHALL):
// - a slot changed owner: what the client read at the old owner can now be written at the new one, which
//   does not know the client read it;
// - a tracking connection was lost: with it went what its node tracked;
// - a read with CLIENT CACHING YES met an ASK, and so ran untracked.
//
// Options are checked as Redis checks them, with its errors. REDIRECT (RESP2's way of receiving
// invalidations, through another connection's Pub/Sub) is refused: a RESP3 client receives them on its own
// connection. A tracking client's reads go to masters whatever --read-from says.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/host_port.h"
#include "proxy/login.h"
#include "proxy/request.h"

namespace slotshift::proxy {

class Backend;
class Session;
class Worker;

class Tracking {
 public:
  Tracking(Session& session, Worker& worker);
  ~Tracking();
  Tracking(const Tracking&) = delete;
  Tracking& operator=(const Tracking&) = delete;

  // CLIENT TRACKING ON|OFF [options]. The reply at once (an error, or OFF's +OK), or "" when `request` is
  // answered once every master has accepted the options on the client's connection to it.
  std::string command(const RequestPtr& request, std::span<const std::string_view> args);
  // A request of the client's was answered: if it was the ON that every master had to accept and one
  // refused, tracking is off again, as after a refused command.
  void answered(const Request& request);
  // CLIENT CACHING YES|NO: the reply; the choice goes with the client's next command (take_caching).
  std::string caching(std::string_view choice);
  // What CLIENT CACHING chose, for the command now being run (after which it no longer holds).
  Request::Caching take_caching() { return std::exchange(caching_, Request::Caching::kNone); }
  // CLIENT TRACKINGINFO, in the client's protocol, and CLIENT GETREDIR.
  std::string info(std::uint8_t protocol) const;
  std::string getredir() const;
  // CLIENT LIST's flags: t, and B in BCAST mode.
  std::string flags() const;

  bool on() const { return on_; }
  // An ON is waiting for the masters' acceptance: the client's next commands wait for it (a refusal turns
  // tracking off again, and they must not have gone to the tracking connections meanwhile).
  bool confirming() const { return confirming_ != nullptr; }
  // The client's tracking connection to `node`, as `login` speaking `protocol`; null when the process has
  // max-blocking-connections of the clients' own connections already.
  Backend* connection(const HostPort& node, const LoginPtr& login, int protocol);
  // The slot map may have changed (Worker::owners_changed).
  void owners_changed();
  // BCAST: a connection to every master, reopened (every 500 ms at most) when lost.
  void check(std::uint64_t now_ms);
  // A read with CACHING YES ran untracked (Request::untracked_read): the client drops its whole cache after
  // that reply.
  void after_untracked_read();
  // Tracking ends (CLIENT TRACKING OFF, RESET): the connections carry nothing more, and each closes once
  // what was on its way there has been answered (RESET does not wait for the client's earlier commands).
  void off();
  // The client left: every connection closes now.
  void close();

 private:
  struct Link {
    std::unique_ptr<Backend> backend;
    std::uint64_t replies_at_flush = 0;  // Backend::replies() when the client was last told to drop its cache
    std::uint64_t warmed_ms = 0;
  };
  // The command every tracking connection runs right after its login.
  std::string setup_command() const;
  // Tells the client to drop its whole cache, after every reply of `after` (null: of any connection) already
  // answered; nothing if no tracking connection has answered a read since the last time.
  void invalidate_all(const Backend* after);
  void on_push(const Backend* from, std::string_view message);
  void close_link(Link& link);
  // The connections stop carrying the client's commands and their invalidations: closed once idle.
  void retire_links();

  Session& session_;
  Worker& worker_;
  bool on_ = false;
  bool bcast_ = false;
  bool optin_ = false;
  bool optout_ = false;
  bool noloop_ = false;
  std::vector<std::string> prefixes_;
  Request::Caching caching_ = Request::Caching::kNone;
  std::map<std::string, Link> links_;  // by connection_key
  std::vector<std::pair<std::string, Link>> retiring_;
  const Request* confirming_ = nullptr;  // the ON waiting for every master's acceptance
  std::uint64_t owner_changes_seen_ = 0;
};

}  // namespace slotshift::proxy
