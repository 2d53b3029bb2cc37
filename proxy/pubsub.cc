#include "proxy/pubsub.h"

#include <vector>

#include "common/resp.h"
#include "proxy/backend.h"
#include "proxy/errors.h"
#include "proxy/session.h"
#include "proxy/worker.h"

namespace slotshift::proxy {
namespace {

// A connection that hosts nothing any more is kept this long: a node that still owns a shard channel's slot
// (the proxy learned of the new owner first) may still deliver its messages meanwhile.
constexpr std::uint64_t kLingerMs = 2000;
// How often subscriptions that could not be made (no owner known, no connection left) are tried again.
constexpr std::uint64_t kRetryMs = 100;

// `name` null: an unsubscribe with nothing subscribed, which names no channel (a null in the client's
// `protocol`; the array itself becomes a push for a RESP3 client as every confirmation does, in Session).
void append_confirmation(std::string& out, std::string_view kind, const std::string* name, std::size_t count,
                         std::uint8_t protocol = 2) {
  resp::append_array_header(out, 3);
  resp::append_bulk(out, kind);
  if (name) {
    resp::append_bulk(out, *name);
  } else if (protocol == 3) {
    out.append("_\r\n");
  } else {
    resp::append_null_bulk(out);
  }
  resp::append_integer(out, static_cast<std::int64_t>(count));
}

std::string text_of(std::string_view element) {
  const resp::Value v = resp::decode(element);
  return v.is_string() ? v.str : std::string();
}

}  // namespace

Subscriptions::Subscriptions(Session& session, Worker& worker) : session_(session), worker_(worker) {}

Subscriptions::~Subscriptions() {
  close();
}

void Subscriptions::close() {
  // Subscriptions the client asked for before its RESET are confirmed first, as a node would have: its
  // later replies wait behind them.
  std::vector<std::pair<RequestPtr, std::string>> answers;
  for (auto& [key, l] : links_)
    for (auto& e : l.expected)
      if (e.request) answers.emplace_back(std::move(e.request), std::move(e.reply));
  while (!links_.empty())
    drop_link(links_.begin()->first);
  channels_.clear();
  patterns_.clear();
  while (!shards_.empty())
    remove_shard(shards_.begin());
  classic_.clear();
  for (auto& [request, reply] : answers)
    worker_.complete(request, std::move(reply));
}

void Subscriptions::settle(Expect& e) {
  if (!e.counted) return;
  e.counted = false;
  worker_.proxy().shard_pending(e.slot).fetch_sub(1);
}

Subscriptions::Shard& Subscriptions::add_shard(const std::string& channel, Slot slot) {
  auto [it, added] = shards_.try_emplace(channel, Shard{slot, ""});
  if (added) worker_.proxy().shard_channels(slot).fetch_add(1);
  return it->second;
}

void Subscriptions::remove_shard(std::map<std::string, Shard>::iterator it) {
  worker_.proxy().shard_channels(it->second.slot).fetch_sub(1);
  shards_.erase(it);
}

const HostPort* Subscriptions::owner(Slot slot) const {
  const Backend* b = worker_.router().owner(slot);
  return b ? &b->address() : nullptr;
}

Subscriptions::Link* Subscriptions::link(const HostPort& node) {
  const std::string key = node.str();
  if (auto it = links_.find(key); it != links_.end()) return it->second.failed ? nullptr : &it->second;
  if (!session_.reserve_own_connection()) return nullptr;
  Link& l = links_[key];
  l.node = node;
  // As the client's other commands: logged in as its user with ACL pass-through, else as the proxy.
  l.backend =
      std::make_unique<Backend>(worker_, node, session_.login_ ? session_.login_ : worker_.own_login_);
  l.backend->set_push_sink([this, key](std::string_view message) { on_message(key, message); });
  // Called inside the failing connection's own callback: check() replaces it at the next tick.
  l.backend->on_fail([this, key] {
    if (auto it = links_.find(key); it != links_.end()) it->second.failed = true;
  });
  return &l;
}

void Subscriptions::drop_link(std::string key) {
  auto it = links_.find(key);
  if (it == links_.end()) return;
  for (Expect& e : it->second.expected)
    settle(e);
  // Freed at the worker's next tick: this may run inside a callback of that very connection.
  it->second.backend->shutdown();
  worker_.retire(std::move(it->second.backend));
  links_.erase(it);
  worker_.proxy().blocking_connections().fetch_sub(1);
  if (classic_ == key) classic_.clear();
}

void Subscriptions::send(Link& l, std::string_view command, std::string_view kind,
                         const std::vector<std::string>& names, RequestPtr request, std::string reply) {
  std::vector<std::string_view> argv{command};
  for (const auto& n : names)
    argv.push_back(n);
  std::string wire;
  resp::append_command(wire, argv);
  const std::uint64_t group = ++next_group_;
  for (std::size_t i = 0; i < names.size(); ++i) {
    Expect e{std::string(kind), names[i], group, nullptr, {}};
    e.sent_ms = worker_.now_ms();
    if (auto shard = shards_.find(names[i]); kind == "ssubscribe" && shard != shards_.end()) {
      // Until the node confirms it, an SPUBLISH for the slot waits (Worker::dispatch).
      e.counted = true;
      e.slot = shard->second.slot;
      worker_.proxy().shard_pending(e.slot).fetch_add(1);
    }
    if (i + 1 == names.size()) {
      e.request = std::move(request);
      e.reply = std::move(reply);
    }
    l.expected.push_back(std::move(e));
  }
  if (!l.backend->send_raw(wire)) l.failed = true;
}

void Subscriptions::subscribe(const RequestPtr& request, Kind kind, std::span<const std::string_view> names) {
  std::vector<std::string> list(names.begin(), names.end());
  std::string reply;
  if (kind == Kind::kShard) {
    const Slot slot = key_slot(list.front());
    for (const auto& n : list)
      if (key_slot(n) != slot) return worker_.complete(request, std::string(errors::kCrossSlot));
    const HostPort* node = owner(slot);
    if (!node) return worker_.complete(request, errors::no_owner(slot));
    Link* l = link(*node);
    if (!l)
      return worker_.complete(request, errors::too_many_blocking(worker_.config().max_blocking_connections));
    for (const auto& n : list) {
      add_shard(n, slot).link = node->str();
      append_confirmation(reply, "ssubscribe", &n, shards_.size());
    }
    send(*l, "SSUBSCRIBE", "ssubscribe", list, request, std::move(reply));
    return;
  }
  if (classic_.empty() || !links_.contains(classic_)) {
    // Any master hears every PUBLISH of the cluster: the owner of the first name's slot spreads clients over
    // the masters.
    const HostPort* node = owner(key_slot(list.front()));
    if (!node && !worker_.router().masters().empty()) node = &worker_.router().masters().front()->address();
    if (!node) return worker_.complete(request, errors::no_owner(key_slot(list.front())));
    if (!link(*node))
      return worker_.complete(request, errors::too_many_blocking(worker_.config().max_blocking_connections));
    classic_ = node->str();
  }
  Link& l = links_.at(classic_);
  auto& names_set = kind == Kind::kChannel ? channels_ : patterns_;
  const std::string_view what = kind == Kind::kChannel ? "subscribe" : "psubscribe";
  for (const auto& n : list) {
    names_set.insert(n);
    append_confirmation(reply, what, &n, count());
  }
  send(l, kind == Kind::kChannel ? "SUBSCRIBE" : "PSUBSCRIBE", what, list, request, std::move(reply));
}

std::string Subscriptions::unsubscribe(Kind kind, std::span<const std::string_view> names) {
  std::string reply;
  if (kind == Kind::kShard) {
    std::vector<std::string> list(names.begin(), names.end());
    if (list.empty())
      for (const auto& [name, shard] : shards_)
        list.push_back(name);
    if (list.empty()) append_confirmation(reply, "sunsubscribe", nullptr, 0, session_.proto_);
    std::map<std::string, std::vector<std::string>> by_link;
    for (const auto& n : list) {
      if (auto it = shards_.find(n); it != shards_.end()) {
        if (!it->second.link.empty()) by_link[it->second.link].push_back(n);
        remove_shard(it);
      }
      append_confirmation(reply, "sunsubscribe", &n, shards_.size());
    }
    for (const auto& [key, channels] : by_link)
      if (auto it = links_.find(key); it != links_.end() && !it->second.failed)
        send(it->second, "SUNSUBSCRIBE", "sunsubscribe", channels);
    return reply;
  }
  auto& names_set = kind == Kind::kChannel ? channels_ : patterns_;
  const std::string_view what = kind == Kind::kChannel ? "unsubscribe" : "punsubscribe";
  std::vector<std::string> list(names.begin(), names.end());
  if (list.empty()) list.assign(names_set.begin(), names_set.end());
  if (list.empty()) append_confirmation(reply, what, nullptr, count(), session_.proto_);
  std::vector<std::string> subscribed;
  for (const auto& n : list) {
    if (names_set.erase(n)) subscribed.push_back(n);
    append_confirmation(reply, what, &n, count());
  }
  // Messages of these stop now (on_message passes only what is subscribed); the node is told on the side.
  if (auto it = links_.find(classic_); !subscribed.empty() && it != links_.end() && !it->second.failed)
    send(it->second, kind == Kind::kChannel ? "UNSUBSCRIBE" : "PUNSUBSCRIBE", what, subscribed);
  return reply;
}

void Subscriptions::deliver(const Link& link, std::string_view message) {
  // In RESP3 a message is a push, which need not wait behind the replies of the client's other commands (a
  // BLPOP that blocks); in RESP2 the client has no other command in subscribed mode.
  if (session_.proto_ == 3) {
    session_.push_out_of_band(message, link.backend.get());
  } else {
    session_.push(message);
  }
}

void Subscriptions::on_message(const std::string& key, std::string_view message) {
  auto it = links_.find(key);
  if (it == links_.end()) return;
  Link& l = it->second;
  if (!message.empty() && message[0] == '-') {
    refused(l, message);
    return;
  }
  std::vector<std::string_view> parts;
  if (!resp::aggregate_elements(message, parts) || parts.size() < 2) return;
  const std::string kind = text_of(parts[0]);
  const std::string name = text_of(parts[1]);
  // Only what the client is subscribed to now: an unsubscribe was answered at once, and the node may still
  // send what it published before it had the UNSUBSCRIBE.
  if (kind == "message" || kind == "pmessage") {
    const bool wanted = key == classic_ && (kind == "message" ? channels_ : patterns_).contains(name);
    if (wanted) deliver(l, message);
    return;
  }
  if (kind == "smessage") {
    // While a slot moves the channel may be subscribed on both owners: each SPUBLISH is sent to one of them.
    if (shards_.contains(name)) deliver(l, message);
    return;
  }
  if (!l.expected.empty() && l.expected.front().kind == kind && l.expected.front().name == name) {
    Expect e = std::move(l.expected.front());
    l.expected.pop_front();
    settle(e);
    if (e.request) worker_.complete(e.request, std::move(e.reply));
    return;
  }
  // A confirmation nobody asked for: a node that lost a slot drops its shard channels (SUNSUBSCRIBE of its
  // own). Still wanted, the channel is subscribed at the slot's owner, unless it already is.
  if (kind == "sunsubscribe")
    if (auto s = shards_.find(name); s != shards_.end() && s->second.link == key) {
      s->second.link.clear();
      // At once, not at the next retry: the slot map is asked again too, and a node that no longer owns the
      // slot answers the SSUBSCRIBE with MOVED (refused() follows it).
      retry_ms_ = 0;
      worker_.router().refresh_soon();
    }
}

void Subscriptions::refused(Link& l, std::string_view error) {
  if (l.expected.empty()) return;
  const std::uint64_t group = l.expected.front().group;
  const std::string kind = l.expected.front().kind;
  std::vector<std::string> names;
  RequestPtr request;
  std::string reply;
  while (!l.expected.empty() && l.expected.front().group == group) {
    names.push_back(l.expected.front().name);
    if (l.expected.front().request) {
      request = std::move(l.expected.front().request);
      reply = std::move(l.expected.front().reply);
    }
    settle(l.expected.front());
    l.expected.pop_front();
  }
  Slot slot = 0;
  HostPort node;
  if (kind == "ssubscribe" && error.starts_with("-MOVED ") && parse_redirect(error, 7, slot, node)) {
    // The slot moved before the proxy knew: subscribed at its owner, with the same confirmation.
    worker_.router().moved(slot, node);
    std::vector<std::string> still;
    for (const auto& n : names)
      if (auto s = shards_.find(n); s != shards_.end()) {
        s->second.link = node.str();
        still.push_back(n);
      }
    Link* to = link(node);
    if (to && !still.empty()) {
      send(*to, "SSUBSCRIBE", "ssubscribe", still, std::move(request), std::move(reply));
      return;
    }
    for (const auto& n : still)
      shards_.at(n).link.clear();  // check() tries again
    if (request) worker_.complete(request, std::move(reply));
    return;
  }
  if (!request) {
    // A subscription the proxy made again on its own (after a lost connection, or to follow a slot) met
    // CLUSTERDOWN, TRYAGAIN or the like: the client asked for it and was told it has it, so it is tried
    // again (check()), on a new connection for channels and patterns.
    for (const auto& n : names)
      if (auto it = shards_.find(n); kind == "ssubscribe" && it != shards_.end()) it->second.link.clear();
    if (kind == "subscribe" || kind == "psubscribe") l.failed = true;
    return;
  }
  // NOPERM (the user may not use these channels), or anything else: not subscribed, as on Redis.
  for (const auto& n : names) {
    if (kind == "subscribe") channels_.erase(n);
    if (kind == "psubscribe") patterns_.erase(n);
    if (auto it = shards_.find(n); kind == "ssubscribe" && it != shards_.end()) remove_shard(it);
  }
  if (request) worker_.complete(request, std::string(error));
}

void Subscriptions::subscribe_shard(const std::string& channel, Shard& shard) {
  const HostPort* node = owner(shard.slot);
  if (!node) return;
  Link* l = link(*node);
  if (!l) return;
  shard.link = node->str();
  send(*l, "SSUBSCRIBE", "ssubscribe", {channel});
}

void Subscriptions::owners_changed() {
  for (auto& [channel, shard] : shards_) {
    const HostPort* node = owner(shard.slot);
    // Subscribed at the new owner now; the old one keeps delivering until it drops the channel.
    if (node && node->str() != shard.link) subscribe_shard(channel, shard);
  }
}

bool Subscriptions::follow(Slot slot, const HostPort& node) {
  const std::string key = node.str();
  bool waiting = false;
  for (auto& [channel, shard] : shards_) {
    if (shard.slot != slot) continue;
    if (shard.link != key) {
      Link* l = link(node);
      if (!l) return waiting;
      shard.link = key;
      send(*l, "SSUBSCRIBE", "ssubscribe", {channel});
    }
    if (auto it = links_.find(key); it != links_.end() && !it->second.failed)
      for (const Expect& e : it->second.expected)
        waiting = waiting || (e.kind == "ssubscribe" && e.name == channel);
  }
  return waiting;
}

void Subscriptions::check(std::uint64_t now_ms) {
  // A node that does not confirm within the request timeout (hung, or cut off with its connection still
  // open): its connection is given up like a lost one, so that nothing stays under way (SPUBLISHes for its
  // slots would wait for good).
  const auto timeout = static_cast<std::uint64_t>(worker_.config().request_timeout.count());
  for (auto& [key, l] : links_)
    if (!l.expected.empty() && now_ms - l.expected.front().sent_ms > timeout) l.failed = true;
  // Answering a request may close the client (its replies over the bound), which closes every link: the
  // answers are given after the walk, and nothing runs after a close.
  std::vector<std::pair<RequestPtr, std::string>> answers;
  // Lost connections: what they carried is subscribed again on new ones (messages published meanwhile are
  // lost, as for any Redis client whose connection drops). Their waiting commands are answered as confirmed.
  std::vector<std::string> failed;
  for (auto& [key, l] : links_)
    if (l.failed) failed.push_back(key);
  for (const auto& key : failed) {
    for (auto& e : links_.at(key).expected)
      if (e.request) answers.emplace_back(std::move(e.request), std::move(e.reply));
    for (auto& [channel, shard] : shards_)
      if (shard.link == key) shard.link.clear();
    drop_link(key);
  }
  for (auto& [request, reply] : answers) {
    worker_.complete(request, std::move(reply));
    if (session_.closing()) return;
  }
  answers.clear();
  // Confirmations that do not come: the client is told, the subscription stays asked for.
  for (auto& [key, l] : links_)
    for (auto& e : l.expected)
      if (e.request && e.request->deadline_ms != 0 && now_ms > e.request->deadline_ms) {
        worker_.stats().errors_timeout.add();
        answers.emplace_back(std::move(e.request), errors::timeout("no confirmation from " + key));
        e.request.reset();
      }
  for (auto& [request, reply] : answers) {
    worker_.complete(request, std::move(reply));
    if (session_.closing()) return;
  }
  if (now_ms >= retry_ms_) {
    retry_ms_ = now_ms + kRetryMs;
    if ((!channels_.empty() || !patterns_.empty()) && (classic_.empty() || !links_.contains(classic_))) {
      const std::string& first = !channels_.empty() ? *channels_.begin() : *patterns_.begin();
      const HostPort* node = owner(key_slot(first));
      if (!node && !worker_.router().masters().empty()) node = &worker_.router().masters().front()->address();
      if (node && link(*node)) {
        classic_ = node->str();
        Link& l = links_.at(classic_);
        if (!channels_.empty())
          send(l, "SUBSCRIBE", "subscribe", std::vector<std::string>(channels_.begin(), channels_.end()));
        if (!patterns_.empty())
          send(l, "PSUBSCRIBE", "psubscribe", std::vector<std::string>(patterns_.begin(), patterns_.end()));
      }
    }
    for (auto& [channel, shard] : shards_)
      if (shard.link.empty()) subscribe_shard(channel, shard);
  }
  // Connections that host nothing any more, after a while.
  std::vector<std::string> idle;
  for (auto& [key, l] : links_) {
    bool used = !l.expected.empty() || (key == classic_ && (!channels_.empty() || !patterns_.empty()));
    for (const auto& [channel, shard] : shards_)
      used = used || shard.link == key;
    if (used || now_ms - l.backend->last_activity_ms() < kLingerMs) continue;
    idle.push_back(key);
  }
  for (const auto& key : idle)
    drop_link(key);
}

}  // namespace slotshift::proxy
