// A client's Pub/Sub subscriptions, on connections of its own (counted with max-blocking-connections): a node
// in subscribed mode sends messages nobody asked for, which no shared connection could carry.
//
// Channels and patterns (SUBSCRIBE, PSUBSCRIBE) live on one connection, to the master that owned the slot of
// the first channel: a cluster node delivers every PUBLISH of the cluster, so one subscription anywhere hears
// them all, once. Shard channels (SSUBSCRIBE) live on a connection to the master of their slot, one per
// master, and follow the slot when it moves: as soon as the proxy learns the new owner (a ROUTE from a move,
// a MOVED, a topology reload) the channel is subscribed there too, before the old owner drops it, so that no
// SPUBLISH sent through the proxy after the move goes unheard.
//
// What the client sees is what one Redis sends: the confirmations carry the client's own counts (the proxy
// keeps its sets), a SUBSCRIBE is confirmed once the node has it (so a message published after the
// confirmation is heard), and an unsubscribed channel's messages stop at once.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>

#include "common/host_port.h"
#include "common/slot.h"
#include "proxy/login.h"
#include "proxy/request.h"

namespace slotshift::proxy {

class Backend;
class Session;
class Worker;

class Subscriptions {
 public:
  friend class ClientAdmin;  // counts what is subscribed, for CLIENT LIST
  enum class Kind : std::uint8_t { kChannel, kPattern, kShard };

  Subscriptions(Session& session, Worker& worker);
  ~Subscriptions();
  Subscriptions(const Subscriptions&) = delete;
  Subscriptions& operator=(const Subscriptions&) = delete;

  // (P|S)SUBSCRIBE: `request` (queued in the client's order) is answered once the node confirms.
  void subscribe(const RequestPtr& request, Kind kind, std::span<const std::string_view> names);
  // (P|S)UNSUBSCRIBE: answered at once; the node is told on the side.
  std::string unsubscribe(Kind kind, std::span<const std::string_view> names);
  // Whether the client is in subscribed mode (anything subscribed, or a subscription on its way).
  bool active() const { return !channels_.empty() || !patterns_.empty() || !shards_.empty(); }
  // The slot map changed: shard channels whose slot has a new owner are subscribed there.
  void owners_changed();
  // An SPUBLISH for `slot` met MOVED toward `node`: the slot's shard channels are subscribed there as well,
  // so that what is published there is heard. True while one of them is not confirmed by the node yet (an
  // SPUBLISH sent there now could go unheard).
  bool follow(Slot slot, const HostPort& node);
  // Connections lost are replaced, subscriptions the nodes dropped are made again, and confirmations that
  // did not come in time answer their request with an error.
  void check(std::uint64_t now_ms);
  // Closes every connection (the client left, or RESET).
  void close();

 private:
  // One confirmation a node will send, in the order it sends them.
  struct Expect {
    std::string kind;      // "subscribe", "sunsubscribe", ...
    std::string name;      // the channel or pattern
    std::uint64_t group;   // the command it belongs to (an error answers a whole command)
    RequestPtr request;    // on the command's last confirmation: the client's request, answered then
    std::string reply;     // what the client gets then
    bool counted = false;  // an SSUBSCRIBE counted in Proxy::shard_pending(slot) until settled
    Slot slot = 0;
    std::uint64_t sent_ms = 0;
  };
  struct Link {
    std::unique_ptr<Backend> backend;
    HostPort node;
    std::deque<Expect> expected;
    bool failed = false;
  };
  struct Shard {
    Slot slot = 0;
    std::string link;  // the key of the link it is subscribed on (links_), "" while none
  };

  // The link to `node` (opened on first use); null when no connection of the client's own is left.
  Link* link(const HostPort& node);
  // Sends `command` with `names` on `link`, expecting a confirmation of `kind` for each.
  void send(Link& l, std::string_view command, std::string_view kind, const std::vector<std::string>& names,
            RequestPtr request = nullptr, std::string reply = {});
  void on_message(const std::string& key, std::string_view message);
  // A message for the client, from `link`.
  void deliver(const Link& link, std::string_view message);
  // A command of `link` was refused (NOPERM, MOVED, ...): its request gets the error; what it would have
  // subscribed is not subscribed.
  void refused(Link& l, std::string_view error);
  // The master of `slot` as the proxy knows it now, or null.
  const HostPort* owner(Slot slot) const;
  void subscribe_shard(const std::string& channel, Shard& shard);
  void drop_link(std::string key);  // by value: it may name the very entry it erases
  // An expected confirmation came, or never will: no longer under way (Proxy::shard_pending).
  void settle(Expect& e);
  // shards_ changes only through these, which keep Proxy::shard_channels() in step.
  Shard& add_shard(const std::string& channel, Slot slot);
  void remove_shard(std::map<std::string, Shard>::iterator it);
  std::size_t count() const { return channels_.size() + patterns_.size(); }

  Session& session_;
  Worker& worker_;
  std::set<std::string> channels_;
  std::set<std::string> patterns_;
  std::map<std::string, Shard> shards_;
  std::map<std::string, Link> links_;  // by node "HOST:PORT"
  std::string classic_;                // the link channels and patterns are on, "" while none
  std::uint64_t next_group_ = 0;
  std::uint64_t retry_ms_ = 0;  // when check() may next replace connections
};

}  // namespace slotshift::proxy
