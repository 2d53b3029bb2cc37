#include "tests/support/scripted_cluster.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <thread>

#include "common/command_table.h"
#include "common/resp.h"

namespace slotshift::test {
namespace {

using Clock = std::chrono::steady_clock;

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string integer(std::int64_t n) {
  return ":" + std::to_string(n) + "\r\n";
}

std::string wrong_arity(std::string_view name) {
  return "-ERR wrong number of arguments for '" + std::string(name) + "' command\r\n";
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(left);
}

// A listening socket on 127.0.0.1 at an ephemeral port; throws on failure (a test cannot run without it).
int listen_loopback(int& port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 128) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error("cannot listen on 127.0.0.1: " + why);
  }
  port = ntohs(addr.sin_port);
  return fd;
}

}  // namespace

// One reply on its way out: sent once `at` has passed and every earlier reply of its connection is out.
struct ScriptedCluster::Outgoing {
  Clock::time_point at;
  std::string bytes;
  bool close = false;
};

struct ScriptedCluster::Conn {
  int fd = -1;
  std::string in;
  std::size_t in_pos = 0;  // bytes of `in` already answered
  resp::Scanner scanner{resp::Scanner::Mode::kRequest};
  std::deque<Outgoing> queue;
  std::string out;
  std::size_t out_pos = 0;
  bool closing = false;  // reads nothing more; closes once `out` is written
  bool broken = false;   // sent something that is not RESP: its error is queued, nothing more is read
  bool dead = false;
  bool in_multi = false;
  bool multi_failed = false;
  bool asking = false;
  std::vector<Argv> queued;
  // Subscribed mode, as a node keeps it for the connection: what (P|S)(UN)SUBSCRIBE confirm, and their
  // counts.
  std::set<std::string> channels, patterns, shards;
};

struct ScriptedCluster::Node {
  int index = 0;
  Slot first = 0;
  Slot last = 0;
  HostPort address;
  std::string id;
  std::string nodes_text;  // CLUSTER NODES as this node answers it (itself flagged myself)
  int listen_fd = -1;
  int wake_fd = -1;
  std::thread thread;
  std::atomic<bool> stopping{false};
  // reset(): the caller bumps `drops_asked`; the node closes every connection and sets `drops_done` to it.
  std::atomic<std::uint64_t> drops_asked{0};
  std::atomic<std::uint64_t> drops_done{0};
  std::atomic<std::size_t> open{0};
  mutable std::mutex mutex;  // guards store and log
  std::map<std::string, std::string> store;
  std::vector<Argv> log;

  void wake() const {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(wake_fd, &one, sizeof one);
  }
};

ScriptedCluster::ScriptedCluster(int count) {
  if (count < 1 || count > 64) throw std::invalid_argument("ScriptedCluster: 1 to 64 nodes");
  for (int i = 0; i < count; ++i) {
    auto node = std::make_unique<Node>();
    node->index = i;
    node->first = static_cast<Slot>(i * kSlotCount / count);
    node->last = static_cast<Slot>((i + 1) * kSlotCount / count - 1);
    int port = 0;
    node->listen_fd = listen_loopback(port);
    node->address = HostPort{"127.0.0.1", port};
    char id[41];
    std::snprintf(id, sizeof id, "%040x", i + 1);
    node->id = id;
    node->wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (node->wake_fd < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    nodes_.push_back(std::move(node));
  }
  for (auto& node : nodes_) {
    for (const auto& other : nodes_) {
      node->nodes_text += other->id + " " + other->address.str() + "@0 " +
                          (other.get() == node.get() ? "myself,master" : "master") + " - 0 0 " +
                          std::to_string(other->index + 1) + " connected " + std::to_string(other->first) +
                          "-" + std::to_string(other->last) + "\n";
    }
  }
  for (auto& node : nodes_) {
    Node* n = node.get();
    n->thread = std::thread([this, n] { serve(*n); });
  }
}

ScriptedCluster::~ScriptedCluster() {
  for (auto& node : nodes_) {
    node->stopping = true;
    node->wake();
  }
  for (auto& node : nodes_) {
    if (node->thread.joinable()) node->thread.join();
    ::close(node->listen_fd);
    ::close(node->wake_fd);
  }
}

HostPort ScriptedCluster::address(int node) const {
  return nodes_.at(static_cast<std::size_t>(node))->address;
}

std::vector<HostPort> ScriptedCluster::addresses() const {
  std::vector<HostPort> out;
  for (const auto& node : nodes_)
    out.push_back(node->address);
  return out;
}

int ScriptedCluster::owner(Slot slot) const {
  for (const auto& node : nodes_) {
    if (slot >= node->first && slot <= node->last) return node->index;
  }
  return kAnyNode;
}

Slot ScriptedCluster::first_slot(int node) const {
  return nodes_.at(static_cast<std::size_t>(node))->first;
}

Slot ScriptedCluster::last_slot(int node) const {
  return nodes_.at(static_cast<std::size_t>(node))->last;
}

// ---------------------------------------------------------------------------------------------------------------
// Script and rules

void ScriptedCluster::set_script(Script script) {
  std::lock_guard lock(mutex_);
  script_ = script ? std::make_shared<const Script>(std::move(script)) : nullptr;
}

std::string ScriptedCluster::run_script(int node, const Argv& argv) {
  std::shared_ptr<const Script> script;
  {
    std::lock_guard lock(mutex_);
    script = script_;
  }
  return script ? (*script)(node, argv) : store_reply(node, argv);
}

void ScriptedCluster::add_rule(Rule rule) {
  std::lock_guard lock(mutex_);
  rules_.push_back(std::move(rule));
}

void ScriptedCluster::fail(std::string command, std::string_view message, int times, int node) {
  add_rule(Rule{std::move(command), node, times, error(message), {}, false});
}

void ScriptedCluster::delay(std::string command, std::chrono::milliseconds by, int times, int node) {
  add_rule(Rule{std::move(command), node, times, "", by, false});
}

void ScriptedCluster::close_connection(std::string command, int times, int node) {
  add_rule(Rule{std::move(command), node, times, "", {}, true});
}

void ScriptedCluster::huge_reply(std::string command, std::size_t bytes, int times, int node) {
  add_rule(Rule{std::move(command), node, times, huge_bulk(bytes), {}, false});
}

std::size_t ScriptedCluster::rules_left() const {
  std::lock_guard lock(mutex_);
  return static_cast<std::size_t>(
      std::count_if(rules_.begin(), rules_.end(), [](const Rule& r) { return r.times > 0; }));
}

bool ScriptedCluster::take_rule(int node, const std::string& name, Rule& out) {
  std::lock_guard lock(mutex_);
  for (auto& rule : rules_) {
    if (rule.times <= 0 || (rule.node != kAnyNode && rule.node != node)) continue;
    // A rule without a command is for every command but CLUSTER and the subscription family (whose replies
    // the session fuzzer counts one per name, as a node answers them).
    const bool subscription = name.ends_with("subscribe");
    if (rule.command.empty() ? name == "cluster" || subscription : rule.command != name) continue;
    --rule.times;
    out = rule;
    return true;
  }
  return false;
}

std::vector<ScriptedCluster::Argv> ScriptedCluster::received(int node) const {
  const Node& n = *nodes_.at(static_cast<std::size_t>(node));
  std::lock_guard lock(n.mutex);
  return n.log;
}

std::vector<ScriptedCluster::Argv> ScriptedCluster::received(int node, std::string_view command) const {
  std::vector<Argv> out;
  for (auto& argv : received(node)) {
    if (lower(argv[0]) == lower(command)) out.push_back(std::move(argv));
  }
  return out;
}

std::size_t ScriptedCluster::connections() const {
  std::size_t n = 0;
  for (const auto& node : nodes_)
    n += node->open.load();
  return n;
}

bool ScriptedCluster::reset(std::chrono::milliseconds deadline) {
  const auto until = Clock::now() + deadline;
  std::vector<std::uint64_t> asked;
  for (auto& node : nodes_) {
    asked.push_back(++node->drops_asked);
    node->wake();
  }
  bool ok = true;
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    while (nodes_[i]->drops_done.load() < asked[i]) {
      if (Clock::now() >= until) {
        ok = false;
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  {
    std::lock_guard lock(mutex_);
    rules_.clear();
    script_ = nullptr;
  }
  for (auto& node : nodes_) {
    std::lock_guard lock(node->mutex);
    node->store.clear();
    node->log.clear();
  }
  return ok;
}

// ---------------------------------------------------------------------------------------------------------------
// Replies

std::string ScriptedCluster::error(std::string_view message) {
  return "-" + std::string(message) + "\r\n";
}

std::string ScriptedCluster::bulk(std::string_view s) {
  std::string out;
  resp::append_bulk(out, s);
  return out;
}

std::string ScriptedCluster::huge_bulk(std::size_t bytes) {
  std::string out = "$" + std::to_string(bytes) + "\r\n";
  out.reserve(out.size() + bytes + 2);
  for (std::size_t i = 0; i < bytes; ++i)
    out.push_back(static_cast<char>('a' + i % 26));
  out += "\r\n";
  return out;
}

std::string ScriptedCluster::nested_array(std::size_t depth) {
  std::string out;
  for (std::size_t i = 0; i < depth; ++i)
    out += "*1\r\n";
  out += "+x\r\n";
  return out;
}

std::string ScriptedCluster::store_reply(int node, const Argv& argv) {
  const std::string name = lower(argv.at(0));
  const std::size_t argc = argv.size();
  Node& n = *nodes_.at(static_cast<std::size_t>(node));
  std::lock_guard lock(n.mutex);
  auto& store = n.store;
  const auto value_of = [&store](const std::string& key) {
    const auto it = store.find(key);
    return it == store.end() ? std::string("$-1\r\n") : bulk(it->second);
  };
  if (name == "get") {
    if (argc != 2) return wrong_arity(name);
    return value_of(argv[1]);
  }
  if (name == "set") {
    if (argc < 3) return wrong_arity(name);
    store[argv[1]] = argv[2];
    return "+OK\r\n";
  }
  if (name == "del" || name == "unlink" || name == "exists" || name == "touch") {
    if (argc < 2) return wrong_arity(name);
    const bool removes = name == "del" || name == "unlink";
    std::int64_t count = 0;
    for (std::size_t i = 1; i < argc; ++i)
      count += static_cast<std::int64_t>(removes ? store.erase(argv[i]) : store.count(argv[i]));
    return integer(count);
  }
  if (name == "incr") {
    if (argc != 2) return wrong_arity(name);
    std::int64_t value = 0;
    if (const auto it = store.find(argv[1]); it != store.end()) {
      const std::string& s = it->second;
      const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
      if (ec != std::errc() || end != s.data() + s.size() || s.empty() ||
          value == std::numeric_limits<std::int64_t>::max()) {
        return "-ERR value is not an integer or out of range\r\n";
      }
    }
    store[argv[1]] = std::to_string(++value);
    return integer(value);
  }
  if (name == "mget") {
    if (argc < 2) return wrong_arity(name);
    std::string out;
    resp::append_array_header(out, argc - 1);
    for (std::size_t i = 1; i < argc; ++i)
      out += value_of(argv[i]);
    return out;
  }
  if (name == "mset") {
    if (argc < 3 || argc % 2 == 0) return wrong_arity(name);
    for (std::size_t i = 1; i + 1 < argc; i += 2)
      store[argv[i]] = argv[i + 1];
    return "+OK\r\n";
  }
  if (name == "dbsize") return integer(static_cast<std::int64_t>(store.size()));
  if (name == "keys" || name == "scan") {
    std::string out;
    if (name == "scan") out = "*2\r\n$1\r\n0\r\n";
    resp::append_array_header(out, store.size());
    for (const auto& [key, value] : store)
      resp::append_bulk(out, key);
    return out;
  }
  if (name == "flushall" || name == "flushdb") {
    store.clear();
    return "+OK\r\n";
  }
  if (name == "ping") return argc >= 2 ? bulk(argv[1]) : std::string("+PONG\r\n");
  if (name == "echo" && argc == 2) return bulk(argv[1]);
  return bulk(argc >= 2 ? name + " " + argv[1] : name);
}

std::string ScriptedCluster::cluster_reply(const Node& node, const Argv& argv) const {
  const std::string sub = argv.size() >= 2 ? lower(argv[1]) : std::string();
  std::string out;
  if (sub == "shards" && argv.size() == 2) {
    resp::append_array_header(out, nodes_.size());
    for (const auto& n : nodes_) {
      resp::append_array_header(out, 4);
      resp::append_bulk(out, "slots");
      resp::append_array_header(out, 2);
      resp::append_integer(out, n->first);
      resp::append_integer(out, n->last);
      resp::append_bulk(out, "nodes");
      resp::append_array_header(out, 1);
      resp::append_array_header(out, 14);
      const auto field = [&out](std::string_view key, std::string_view value) {
        resp::append_bulk(out, key);
        resp::append_bulk(out, value);
      };
      field("id", n->id);
      resp::append_bulk(out, "port");
      resp::append_integer(out, n->address.port);
      field("ip", n->address.host);
      field("endpoint", n->address.host);
      field("role", "master");
      resp::append_bulk(out, "replication-offset");
      resp::append_integer(out, 0);
      field("health", "online");
    }
    return out;
  }
  if (sub == "slots" && argv.size() == 2) {
    resp::append_array_header(out, nodes_.size());
    for (const auto& n : nodes_) {
      resp::append_array_header(out, 3);
      resp::append_integer(out, n->first);
      resp::append_integer(out, n->last);
      resp::append_array_header(out, 3);
      resp::append_bulk(out, n->address.host);
      resp::append_integer(out, n->address.port);
      resp::append_bulk(out, n->id);
    }
    return out;
  }
  if (sub == "nodes" && argv.size() == 2) return bulk(node.nodes_text);
  if (sub == "myid" && argv.size() == 2) return bulk(node.id);
  if (sub == "keyslot" && argv.size() == 3) return integer(key_slot(argv[2]));
  if (sub == "info" && argv.size() == 2) {
    return bulk("cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_known_nodes:" +
                std::to_string(nodes_.size()) + "\r\ncluster_size:" + std::to_string(nodes_.size()) + "\r\n");
  }
  return error("ERR Unknown subcommand or wrong number of arguments for '" + sub + "'. Try CLUSTER HELP.");
}

std::string ScriptedCluster::check_slots(const Node& node, const Argv& argv) const {
  if (!slot_checks_) return "";
  const std::vector<std::string_view> views(argv.begin(), argv.end());
  std::vector<std::size_t> keys;
  if (keys_of(views, keys) != KeysError::kNone || keys.empty()) return "";
  const Slot slot = key_slot(argv[keys[0]]);
  for (std::size_t k : keys) {
    if (key_slot(argv[k]) != slot) return "-CROSSSLOT Keys in request don't hash to the same slot\r\n";
  }
  if (slot >= node.first && slot <= node.last) return "";
  return error("MOVED " + std::to_string(slot) + " " + address(owner(slot)).str());
}

// (P|S)(UN)SUBSCRIBE as a node answers them: a confirmation per name (or one with a nil name when nothing
// is left to unsubscribe), with the connection's count of channels and patterns, or of shard channels.
std::string subscription_reply(ScriptedCluster::Argv argv, const std::string& name,
                               std::set<std::string>& set, const std::set<std::string>& other) {
  const bool subscribing = name.find("unsubscribe") == std::string::npos;
  std::vector<std::string> names(argv.begin() + 1, argv.end());
  if (!subscribing && names.empty()) names.assign(set.begin(), set.end());
  const bool shard = name[0] == 's';
  const auto count = [&] { return static_cast<std::int64_t>(set.size() + (shard ? 0 : other.size())); };
  std::string out;
  if (names.empty()) {
    resp::append_array_header(out, 3);
    resp::append_bulk(out, name);
    resp::append_null_bulk(out);
    resp::append_integer(out, count());
  }
  for (const auto& n : names) {
    if (subscribing) {
      set.insert(n);
    } else {
      set.erase(n);
    }
    resp::append_array_header(out, 3);
    resp::append_bulk(out, name);
    resp::append_bulk(out, n);
    resp::append_integer(out, count());
  }
  return out;
}

std::string ScriptedCluster::answer(Node& node, Conn& conn, const Argv& argv, const std::string& name) {
  if (name == "subscribe" || name == "unsubscribe")
    return subscription_reply(argv, name, conn.channels, conn.patterns);
  if (name == "psubscribe" || name == "punsubscribe")
    return subscription_reply(argv, name, conn.patterns, conn.channels);
  if (name == "ssubscribe" || name == "sunsubscribe")
    return subscription_reply(argv, name, conn.shards, conn.shards);
  if (name == "asking") {
    conn.asking = true;
    return "+OK\r\n";
  }
  if (name == "multi") {
    if (conn.in_multi) return error("ERR MULTI calls can not be nested");
    conn.in_multi = true;
    conn.multi_failed = false;
    conn.queued.clear();
    return "+OK\r\n";
  }
  if (name == "discard" || name == "exec") {
    if (!conn.in_multi)
      return error("ERR " + std::string(name == "exec" ? "EXEC" : "DISCARD") + " without MULTI");
    conn.in_multi = false;
    conn.asking = false;
    std::vector<Argv> queued;
    queued.swap(conn.queued);
    if (name == "discard") return "+OK\r\n";
    if (conn.multi_failed) return "-EXECABORT Transaction discarded because of previous errors.\r\n";
    std::string out;
    resp::append_array_header(out, queued.size());
    for (const auto& q : queued)
      out += run_script(node.index, q);
    return out;
  }
  if (conn.in_multi) {
    // As Redis: a command refused at queue time answers its error now, and EXEC then aborts.
    const std::string refused = conn.asking ? std::string() : check_slots(node, argv);
    if (!refused.empty()) {
      conn.multi_failed = true;
      return refused;
    }
    conn.queued.push_back(argv);
    return "+QUEUED\r\n";
  }
  const bool asking = conn.asking;
  conn.asking = false;
  if (name == "cluster") return cluster_reply(node, argv);
  const std::string refused = asking ? std::string() : check_slots(node, argv);
  if (!refused.empty()) return refused;
  return run_script(node.index, argv);
}

void ScriptedCluster::on_command(Node& node, Conn& conn, Argv argv) {
  const std::string name = lower(argv[0]);
  if (recording_) {
    std::lock_guard lock(node.mutex);
    node.log.push_back(argv);
  }
  Rule rule;
  const bool ruled = take_rule(node.index, name, rule);
  Outgoing out;
  out.at = Clock::now() + (ruled ? rule.delay : std::chrono::milliseconds(0));
  out.close = ruled && rule.close;
  if (!ruled || (rule.reply.empty() && !rule.close)) {
    out.bytes = answer(node, conn, argv, name);
  } else {
    // The rule's bytes replace the answer, and the command had no other effect: inside MULTI an error fails
    // the transaction (as a command refused at queue time does), EXEC and DISCARD still end it.
    out.bytes = rule.reply;
    if (conn.in_multi) {
      if (name == "exec" || name == "discard") {
        conn.in_multi = false;
        conn.queued.clear();
      } else if (!out.bytes.empty() && out.bytes[0] == '-') {
        conn.multi_failed = true;
      }
    }
    if (!conn.in_multi) conn.asking = false;
  }
  conn.queue.push_back(std::move(out));
}

// ---------------------------------------------------------------------------------------------------------------
// The node's thread

void ScriptedCluster::serve(Node& node) {
  std::vector<std::unique_ptr<Conn>> conns;
  std::vector<pollfd> fds;
  std::uint64_t drops_seen = 0;
  std::string chunk(64 * 1024, '\0');

  const auto drain_backlog = [&node] {
    for (;;) {
      const int fd = ::accept4(node.listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) break;
      ::close(fd);
    }
  };
  const auto close_conn = [&node](Conn& c) {
    if (c.fd >= 0) {
      ::close(c.fd);
      c.fd = -1;
      --node.open;
    }
    c.dead = true;
  };
  // Moves every due reply to the output, in order, and writes what the socket takes.
  const auto pump = [&close_conn](Conn& c, Clock::time_point now) {
    if (c.dead) return;
    while (!c.closing && !c.queue.empty() && c.queue.front().at <= now) {
      Outgoing o = std::move(c.queue.front());
      c.queue.pop_front();
      c.out += o.bytes;
      if (o.close) {
        c.closing = true;
        c.queue.clear();
      }
    }
    while (c.out_pos < c.out.size()) {
      const ssize_t n = ::send(c.fd, c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        close_conn(c);
        return;
      }
      c.out_pos += static_cast<std::size_t>(n);
    }
    if (c.out_pos == c.out.size()) {
      c.out.clear();
      c.out_pos = 0;
      if (c.closing) close_conn(c);
    }
  };

  while (!node.stopping.load()) {
    const auto now = Clock::now();
    int timeout = -1;
    for (auto& c : conns) {
      pump(*c, now);
      if (!c->dead && !c->closing && !c->queue.empty()) {
        const int wait = remaining_ms(c->queue.front().at) + 1;
        timeout = timeout < 0 ? wait : std::min(timeout, wait);
      }
    }
    std::erase_if(conns, [](const std::unique_ptr<Conn>& c) { return c->dead; });

    fds.clear();
    fds.push_back({node.wake_fd, POLLIN, 0});
    fds.push_back({node.listen_fd, POLLIN, 0});
    for (auto& c : conns) {
      const bool reading = !c->closing && !c->broken;
      const short events = static_cast<short>((reading ? POLLIN : 0) | (c->out.empty() ? 0 : POLLOUT));
      fds.push_back({c->fd, events, 0});
    }
    if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) break;

    if (fds[0].revents & POLLIN) {
      std::uint64_t value = 0;
      [[maybe_unused]] const auto n = ::read(node.wake_fd, &value, sizeof value);
    }
    if (const std::uint64_t asked = node.drops_asked.load(); asked != drops_seen) {
      for (auto& c : conns)
        close_conn(*c);
      conns.clear();
      drain_backlog();
      drops_seen = asked;
      node.drops_done = asked;
      continue;
    }

    const std::size_t polled = conns.size();
    for (std::size_t i = 0; i < polled; ++i) {
      Conn& c = *conns[i];
      const short revents = fds[i + 2].revents;
      if (revents == 0) continue;
      if (c.closing || c.broken) {
        // Only writing is left (the loop's next pump does it), unless the peer is gone.
        if (revents & (POLLHUP | POLLERR)) close_conn(c);
        continue;
      }
      // Everything the socket holds, then every whole command in it.
      for (;;) {
        const ssize_t n = ::recv(c.fd, chunk.data(), chunk.size(), 0);
        if (n > 0) {
          c.in.append(chunk.data(), static_cast<std::size_t>(n));
          continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) c.closing = true;
        break;
      }
      while (!c.broken) {
        const std::string_view data = std::string_view(c.in).substr(c.in_pos);
        const resp::Status status = c.scanner.scan(data);
        if (status == resp::Status::kIncomplete) break;
        if (status == resp::Status::kError) {
          // As Redis: say what was wrong, then close.
          c.queue.push_back({Clock::now(), error("ERR " + c.scanner.error()), true});
          c.broken = true;
          c.in.clear();
          c.in_pos = 0;
          break;
        }
        std::vector<std::string_view> args;
        c.scanner.args(data, args);
        Argv argv(args.begin(), args.end());
        c.in_pos += c.scanner.size();
        c.scanner.reset();
        if (!argv.empty()) on_command(node, c, std::move(argv));
      }
      if (c.in_pos == c.in.size()) {
        c.in.clear();
        c.in_pos = 0;
      } else if (c.in_pos > (1u << 16) && c.in_pos > c.in.size() / 2) {
        c.in.erase(0, c.in_pos);
        c.in_pos = 0;
      }
      // A peer that closed gets what was already due; the rest is dropped with the connection.
      if (c.closing && c.out.empty()) close_conn(c);
    }

    if (fds[1].revents & POLLIN) {
      for (;;) {
        const int fd = ::accept4(node.listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        auto c = std::make_unique<Conn>();
        c->fd = fd;
        ++node.open;
        conns.push_back(std::move(c));
      }
    }
  }
  for (auto& c : conns)
    close_conn(*c);
}

// ---------------------------------------------------------------------------------------------------------------
// PortReservation

PortReservation::PortReservation() {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd_);
    throw std::runtime_error("cannot reserve a loopback port: " + why);
  }
  port_ = ntohs(addr.sin_port);
}

PortReservation::~PortReservation() {
  ::close(fd_);
}

// ---------------------------------------------------------------------------------------------------------------
// TestClient

int connect_loopback(int port, std::chrono::milliseconds timeout) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS) {
    ::close(fd);
    return -1;
  }
  pollfd p{fd, POLLOUT, 0};
  int error = 0;
  socklen_t len = sizeof error;
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1 ||
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
    ::close(fd);
    return -1;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

TestClient::TestClient(int port, std::chrono::milliseconds timeout)
    : fd_(connect_loopback(port, timeout)), timeout_(timeout) {}

TestClient::~TestClient() {
  if (fd_ >= 0) ::close(fd_);
}

bool TestClient::send_raw(std::string_view bytes) {
  if (fd_ < 0) return false;
  const auto deadline = Clock::now() + timeout_;
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    pollfd p{fd_, POLLOUT, 0};
    if (::poll(&p, 1, remaining_ms(deadline)) != 1) return false;
  }
  return true;
}

bool TestClient::send(const std::vector<std::string_view>& argv) {
  std::string wire;
  resp::append_command(wire, argv);
  return send_raw(wire);
}

std::string TestClient::read_reply() {
  if (fd_ < 0) return "";
  const auto deadline = Clock::now() + timeout_;
  char buf[16 * 1024];
  for (;;) {
    resp::Scanner scanner(resp::Scanner::Mode::kReply);
    const resp::Status status = scanner.scan(in_);
    if (status == resp::Status::kError) return "";
    if (status == resp::Status::kComplete) {
      std::string reply = in_.substr(0, scanner.size());
      in_.erase(0, scanner.size());
      return reply;
    }
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, remaining_ms(deadline)) != 1) return "";
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return "";
    if (n > 0) in_.append(buf, static_cast<std::size_t>(n));
  }
}

std::string TestClient::command(const std::vector<std::string_view>& argv) {
  return send(argv) ? read_reply() : std::string();
}

}  // namespace slotshift::test
