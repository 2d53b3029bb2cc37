#include "tests/fuzz/session_harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <functional>
#include <iterator>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/resp.h"
#include "common/slot.h"
#include "proxy/worker.h"

namespace slotshift::fuzz {
namespace {

using Clock = std::chrono::steady_clock;
using Rule = test::ScriptedCluster::Rule;
using namespace std::chrono_literals;

// Every wait has a deadline. Replies: a request's deadline in the proxy is 300 ms (see the config below), and
// the rules' delays add up to at most kMaxDelay; the rest is room for a loaded machine.
constexpr auto kReadyDeadline = 5s;
constexpr auto kWriteDeadline = 10s;
constexpr auto kReplyDeadline = 8s;
constexpr auto kCloseDeadline = 2s;
constexpr auto kPingDeadline = 5s;
constexpr auto kMaxDelay = 2000ms;
constexpr int kPacedRounds = 50;

std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// splitmix64: the chunk sizes, drawn from the input's hash, so an input always replays the same.
struct Rng {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

struct Plan {
  int connections = 1;
  bool paced = false;
  unsigned chunking = 0;
  bool drop_last = false;
  bool drop_with_reset = false;
  std::vector<Rule> rules;
  std::vector<std::string> streams;
};

// One rule from four input bytes: node (and, in its high bits, how many times), command, action, parameter.
Rule rule_of(const unsigned char* b, const test::ScriptedCluster& cluster) {
  using test::ScriptedCluster;
  Rule rule;
  const int nodes = cluster.size();
  const int node = b[0] % (nodes + 1);
  rule.node = node == nodes ? ScriptedCluster::kAnyNode : node;
  rule.times = 1 + (b[0] >> 4) % 4;
  rule.command = std::string(kRuleCommands[b[1] % std::size(kRuleCommands)]);
  const unsigned param = b[3];
  // A redirect names a node and a slot that node really owns: the proxy's map stays true, and the node the
  // command lands on sends it on to the owner of its key if that is another.
  const int target = static_cast<int>(param % static_cast<unsigned>(nodes));
  const std::string slot = std::to_string(cluster.first_slot(target) + param);
  const std::string to = cluster.address(target).str();
  switch (b[2] % kRuleActions) {
    case 0:
      rule.reply = ScriptedCluster::error("MOVED " + slot + " " + to);
      break;
    case 1:
      rule.reply = ScriptedCluster::error("ASK " + slot + " " + to);
      break;
    case 2:
      rule.reply = ScriptedCluster::error("TRYAGAIN Multiple keys request during rehashing of slot");
      break;
    case 3:
      rule.reply = ScriptedCluster::error("CLUSTERDOWN The cluster is down");
      break;
    case 4:
      rule.reply = ScriptedCluster::error("NOREPLICAS Not enough good replicas to write.");
      break;
    case 5:
      rule.reply = ScriptedCluster::error("ERR scripted failure");
      break;
    case 6:
      rule.delay = std::chrono::milliseconds((param % 32) * 10);
      break;
    case 7:
      rule.close = true;
      break;
    case 8:  // a reply torn by the connection closing
      rule.reply = "$100\r\n" + std::string(param % 100, 'x');
      rule.close = true;
      break;
    case 9:  // up to 1 MB, or up to 4 MB: more than a loopback socket takes in one write
      rule.reply = ScriptedCluster::huge_bulk((param % 64 + 1) * (param < 192 ? 16 : 64) * 1024);
      break;
    case 10:  // the proxy's reply scanner allows 64 levels
      rule.reply = ScriptedCluster::nested_array(40 + param % 64);
      break;
    case 11: {  // not RESP, each detectably so (an incomplete reply would only stall a blocking command)
      static constexpr std::string_view kGarbage[] = {"?\r\n",   "$abc\r\n", "*x\r\n", "$-2\r\n",
                                                      "*-5\r\n", ":12a\r\n", "#x\r\n", "$3\r\nabcd\r\n",
                                                      "%-1\r\n", "\r\n"};
      rule.reply = std::string(kGarbage[param % std::size(kGarbage)]);
      break;
    }
    case 12: {  // RESP3 where RESP2 is expected
      static constexpr std::string_view kResp3[] = {"%1\r\n+a\r\n:1\r\n",
                                                    "_\r\n",
                                                    "#t\r\n",
                                                    ",1.5\r\n",
                                                    "(12345678901234567890\r\n",
                                                    "=7\r\ntxt:abc\r\n",
                                                    "|1\r\n+k\r\n+v\r\n+OK\r\n",
                                                    ">2\r\n+a\r\n+b\r\n",
                                                    "~1\r\n+x\r\n",
                                                    "!3\r\nERR\r\n",
                                                    "*?\r\n:1\r\n.\r\n",
                                                    "$?\r\n;3\r\nabc\r\n;0\r\n"};
      rule.reply = std::string(kResp3[param % std::size(kResp3)]);
      break;
    }
    case 13: {  // well-formed, but not the shape the command's merge expects
      static constexpr std::string_view kShapes[] = {":7\r\n",
                                                     "*0\r\n",
                                                     "$-1\r\n",
                                                     "*-1\r\n",
                                                     "+OK\r\n",
                                                     "*2\r\n$1\r\n0\r\n*0\r\n",
                                                     "*3\r\n:1\r\n:2\r\n:3\r\n",
                                                     "*2\r\n$2\r\nx1\r\n*1\r\n:1\r\n"};
      rule.reply = std::string(kShapes[param % std::size(kShapes)]);
      break;
    }
    case 14:  // a reply nobody asked for, after the real one
      rule.reply = "+OK\r\n+OK\r\n";
      break;
    default: {  // redirects to nowhere, by name, or malformed
      const std::string port = std::to_string(cluster.address(target).port);
      const std::string bad[] = {"MOVED " + slot + " 127.0.0.1:1",     "MOVED " + slot + " localhost:" + port,
                                 "ASK " + slot + " localhost:" + port, "MOVED abc",
                                 "MOVED 99999 127.0.0.1:7000",         "ASK 1",
                                 "MOVED " + slot + " [::1]:1",         "MOVED 1 :0"};
      rule.reply = ScriptedCluster::error(bad[param % std::size(bad)]);
      break;
    }
  }
  return rule;
}

Plan decode(std::string_view in, const test::ScriptedCluster& cluster) {
  Plan p;
  const auto byte = [&in](std::size_t i) { return i < in.size() ? static_cast<unsigned char>(in[i]) : 0; };
  p.connections = 1 + (byte(0) & 3);
  p.paced = (byte(0) & 4) != 0;
  p.chunking = byte(0) >> 3;
  const int rules = byte(1) & kMaxRules;
  p.drop_last = (byte(1) & 8) != 0;
  p.drop_with_reset = (byte(1) & 16) != 0;
  std::size_t pos = std::min<std::size_t>(2, in.size());
  auto delay_left = kMaxDelay;
  for (int r = 0; r < rules && pos + 4 <= in.size(); ++r, pos += 4) {
    Rule rule = rule_of(reinterpret_cast<const unsigned char*>(in.data() + pos), cluster);
    // Delays add up along a connection: keep their sum bounded, so every wait below stays meaningful.
    rule.delay = std::min(rule.delay, delay_left / rule.times);
    delay_left -= rule.delay * rule.times;
    p.rules.push_back(std::move(rule));
  }
  p.streams.assign(static_cast<std::size_t>(p.connections), std::string());
  std::string_view rest = in.substr(pos);
  for (std::size_t piece = 0;; ++piece) {
    const std::size_t sep = rest.find(kStreamSeparator);
    p.streams[piece % p.streams.size()].append(rest.substr(0, sep));
    if (sep == std::string_view::npos) break;
    rest.remove_prefix(sep + kStreamSeparator.size());
  }
  return p;
}

// What a stream asks of the proxy: a reply per command, up to and including QUIT or the first protocol error
// (the proxy answers it, then closes). A command cut short at the end gets none.
struct Expectation {
  std::size_t replies = 0;
  bool closes = false;
  // Bytes follow the QUIT or the protocol error. The proxy closes with them unread, or they arrive after the
  // close: either way its kernel answers with a reset, which discards replies not yet delivered. That is TCP
  // (Redis closes the same way), so such a stream may get fewer replies.
  bool trailing = false;
};

bool is(std::string_view arg, std::string_view lower_name) {
  return arg.size() == lower_name.size() &&
         std::equal(arg.begin(), arg.end(), lower_name.begin(),
                    [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
}

Expectation expect(std::string_view stream, const resp::Limits& limits) {
  Expectation e;
  resp::Scanner scanner(resp::Scanner::Mode::kRequest, limits);
  std::vector<std::string_view> args;
  // The state that decides which commands get a reply: CLIENT REPLY OFF and SKIP silence replies (outside
  // MULTI; inside, CLIENT is refused), RESET and CLIENT REPLY ON bring them back.
  bool off = false, skip = false, in_multi = false;
  // Subscribed mode: a (P|S)(UN)SUBSCRIBE is one reply made of a confirmation per name (silenced or skipped
  // whole), and every other command but PING, QUIT and RESET is refused.
  std::set<std::string> channels, patterns, shards;
  const auto subscribed = [&] { return !channels.empty() || !patterns.empty() || !shards.empty(); };
  auto reply = [&](std::size_t messages = 1) {
    if (off) return;
    if (skip) {
      skip = false;
      return;
    }
    e.replies += messages;
  };
  // The messages a subscription command outside MULTI brings, with the sets updated as the proxy does.
  const auto subscription = [&](const std::vector<std::string_view>& a) -> std::size_t {
    const bool shard = is(a[0], "ssubscribe") || is(a[0], "sunsubscribe");
    const bool pattern = is(a[0], "psubscribe") || is(a[0], "punsubscribe");
    auto& set = shard ? shards : pattern ? patterns : channels;
    const bool subscribing =
        !(is(a[0], "unsubscribe") || is(a[0], "punsubscribe") || is(a[0], "sunsubscribe"));
    if (subscribing) {
      if (a.size() < 2) return 1;  // wrong arity
      if (shard)
        for (std::size_t i = 2; i < a.size(); ++i)
          if (key_slot(a[i]) != key_slot(a[1])) return 1;  // CROSSSLOT
      for (std::size_t i = 1; i < a.size(); ++i)
        set.emplace(a[i]);
      return a.size() - 1;
    }
    if (a.size() < 2) {
      const std::size_t n = std::max<std::size_t>(1, set.size());
      set.clear();
      return n;
    }
    for (std::size_t i = 1; i < a.size(); ++i)
      set.erase(std::string(a[i]));
    return a.size() - 1;
  };
  const auto is_subscription = [](std::string_view n) {
    return is(n, "subscribe") || is(n, "psubscribe") || is(n, "ssubscribe") || is(n, "unsubscribe") ||
           is(n, "punsubscribe") || is(n, "sunsubscribe");
  };
  while (!stream.empty()) {
    const resp::Status status = scanner.scan(stream);
    if (status == resp::Status::kIncomplete) break;
    if (status == resp::Status::kError) {
      reply();
      e.closes = true;
      e.trailing = true;  // the rest of the malformed command at least
      break;
    }
    scanner.args(stream, args);
    if (!args.empty()) {
      const std::string_view name = args[0];
      if (is(name, "quit")) {
        reply();
        e.closes = true;
        e.trailing = stream.size() > scanner.size();
        break;
      }
      if (is(name, "reset")) {
        if (args.size() == 1) {
          off = skip = in_multi = false;
          channels.clear();
          patterns.clear();
          shards.clear();
        }
        reply();
      } else if (!in_multi && is_subscription(name)) {
        reply(subscription(args));
      } else if (!in_multi && subscribed()) {
        reply();  // PING's array, or the error of a command not allowed in subscribed mode
      } else if (!in_multi && is(name, "client") && args.size() == 3 && is(args[1], "reply")) {
        if (is(args[2], "on")) {
          off = skip = false;
          reply();
        } else if (is(args[2], "off")) {
          // Not answered itself (a pending SKIP is spent on it).
          off = true;
          skip = false;
        } else if (is(args[2], "skip")) {
          // Not answered itself either; it skips the next reply unless replies are off anyway.
          skip = !off;
        } else {
          reply();
        }
      } else {
        if (is(name, "multi") && args.size() == 1) {
          in_multi = true;
        } else if (in_multi && (is(name, "exec") || is(name, "discard"))) {
          in_multi = false;
        }
        reply();
      }
    }
    stream.remove_prefix(scanner.size());
    scanner.reset();
  }
  return e;
}

// One client connection of an input.
struct Client {
  int fd = -1;
  std::string_view stream;
  std::size_t written = 0;
  std::size_t chunk_left = 0;
  bool drop = false;          // goes away once written
  bool write_closed = false;  // a write failed: the proxy has closed
  bool closed = false;        // read EOF or a reset
  Expectation expected;
  std::string in;
  std::size_t in_pos = 0;
  // Replies can be deeper and larger than the proxy's own limits allow it to read; the client only checks
  // that they are RESP.
  resp::Scanner scanner{resp::Scanner::Mode::kReply, resp::Limits{1u << 30, 1u << 24, 4096, 1u << 20}};
  std::size_t replies = 0;
  std::string last_reply;  // the start of the last one, for the report
  std::string failure;

  bool active() const { return fd >= 0 && !drop; }
};

// At most 80 bytes of `s`, printable, for a report.
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 80)) {
    if (c == '\r') {
      out += "\\r";
    } else if (c == '\n') {
      out += "\\n";
    } else if (std::isprint(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (s.size() > 80) out += "...";
  return out;
}

// Reads what has arrived and counts the whole replies in it.
void read_available(Client& c) {
  if (c.fd < 0 || c.closed) return;
  char buf[64 * 1024];
  for (;;) {
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) {
      c.in.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) c.closed = true;
    break;
  }
  while (c.failure.empty()) {
    const std::string_view data = std::string_view(c.in).substr(c.in_pos);
    const resp::Status status = c.scanner.scan(data);
    if (status == resp::Status::kIncomplete) break;
    if (status == resp::Status::kError) {
      c.failure = "reply " + std::to_string(c.replies + 1) + " is not RESP (" + c.scanner.error() +
                  "): " + printable(data);
      break;
    }
    c.last_reply = printable(data.substr(0, c.scanner.size()));
    c.in_pos += c.scanner.size();
    c.scanner.reset();
    if (++c.replies > c.expected.replies) {
      c.failure = "more replies than commands (" + std::to_string(c.expected.replies) +
                  "); the extra one: " + c.last_reply;
    }
  }
  if (c.in_pos == c.in.size()) {
    c.in.clear();
    c.in_pos = 0;
  } else if (c.in_pos > (1u << 16)) {
    c.in.erase(0, c.in_pos);
    c.in_pos = 0;
  }
}

void close_client(Client& c, bool reset) {
  if (c.fd < 0) return;
  if (reset) {
    const linger l{1, 0};
    ::setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  ::close(c.fd);
  c.fd = -1;
}

// PING on a fresh connection. `transport` says the connection itself failed (refused, or reset before a
// byte came back): loopback connections to one port, thousands a minute, now and then meet a TIME_WAIT
// left by an earlier one, which is the kernel's matter, not the proxy's.
struct PingResult {
  std::string failure;  // "" for +PONG in time
  bool transport = false;
};

PingResult ping(int port) {
  const int fd = test::connect_loopback(port, 2s);
  if (fd < 0) return {"cannot connect", true};
  constexpr std::string_view kPing = "*1\r\n$4\r\nPING\r\n";
  std::string reply;
  bool reset = ::send(fd, kPing.data(), kPing.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(kPing.size());
  const auto deadline = Clock::now() + kPingDeadline;
  while (!reset && reply.size() < 7 && Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, 1, 50);
    char buf[64];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      reply.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      reset = true;
    }
  }
  ::close(fd);
  if (reply == "+PONG\r\n") return {};
  const std::string got = reply.empty() ? std::string("nothing") : "'" + printable(reply) + "'";
  if (reset) return {"closed after " + got, reply.empty()};
  return {"got " + got + " in " + std::to_string(kPingDeadline.count()) + " s", false};
}

std::size_t next_chunk(const Plan& plan, Rng& rng, std::size_t left) {
  if (plan.chunking == 0) return left;
  if (plan.chunking == 1) return 1;
  const std::size_t max = std::size_t{1} << (plan.chunking % 14 + 1);
  return std::min(left, 1 + static_cast<std::size_t>(rng.next() % max));
}

std::string describe(std::size_t index, const Client& c) {
  return "connection " + std::to_string(index) + " (" + std::to_string(c.stream.size()) + " bytes, " +
         std::to_string(c.expected.replies) + " replies expected, " + std::to_string(c.replies) +
         " received, last: " + c.last_reply + ")";
}

// Writes every stream in chunks, reading replies meanwhile, then waits for the replies; "" if all is well.
std::string drive(const Plan& plan, std::vector<Client>& clients, const proxy::Config& config,
                  std::uint64_t input_hash, const std::function<bool()>& slow_reader_closed) {
  const resp::Limits limits{config.max_bulk_bytes, config.max_arguments, 64, 64 * 1024};
  for (std::size_t i = 0; i < clients.size(); ++i) {
    Client& c = clients[i];
    c.stream = plan.streams[i];
    c.expected = expect(c.stream, limits);
    c.drop = plan.drop_last && i + 1 == clients.size();
    c.fd = test::connect_loopback(config.listen.port, 2s);
    if (c.fd < 0) return "cannot connect to the proxy";
  }
  Rng rng{input_hash ^ plan.chunking};
  std::vector<pollfd> fds;

  const auto write_deadline = Clock::now() + kWriteDeadline;
  for (int round = 0;; ++round) {
    bool pending = false;
    bool blocked = false;
    for (auto& c : clients) {
      if (c.fd < 0 || c.write_closed || c.written == c.stream.size()) continue;
      const std::size_t left = c.stream.size() - c.written;
      if (c.chunk_left == 0) c.chunk_left = next_chunk(plan, rng, left);
      const ssize_t n = ::send(c.fd, c.stream.data() + c.written, std::min(c.chunk_left, left), MSG_NOSIGNAL);
      if (n > 0) {
        c.written += static_cast<std::size_t>(n);
        c.chunk_left -= static_cast<std::size_t>(n);
      } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        blocked = true;
      } else {
        c.write_closed = true;
      }
      if (c.drop && (c.written == c.stream.size() || c.write_closed)) close_client(c, plan.drop_with_reset);
      pending |= c.fd >= 0 && !c.write_closed && c.written < c.stream.size();
    }
    for (auto& c : clients)
      read_available(c);
    if (!pending) break;
    if (Clock::now() > write_deadline) {
      for (std::size_t i = 0; i < clients.size(); ++i) {
        if (clients[i].fd >= 0 && clients[i].written < clients[i].stream.size()) {
          return "the proxy stopped reading: " + std::to_string(clients[i].written) + " bytes written on " +
                 describe(i, clients[i]);
        }
      }
    }
    if (blocked) {
      fds.clear();
      for (auto& c : clients) {
        if (c.fd >= 0) fds.push_back({c.fd, static_cast<short>(POLLIN | POLLOUT), 0});
      }
      ::poll(fds.data(), fds.size(), 5);
    } else if (plan.paced && round < kPacedRounds) {
      std::this_thread::sleep_for(200us);
    }
  }

  const auto reply_deadline = Clock::now() + kReplyDeadline;
  for (;;) {
    fds.clear();
    bool failed = false;
    for (auto& c : clients) {
      read_available(c);
      failed |= !c.failure.empty();
      if (c.active() && !c.closed && c.replies < c.expected.replies) fds.push_back({c.fd, POLLIN, 0});
    }
    if (failed || fds.empty()) break;
    const auto now = Clock::now();
    if (now >= reply_deadline) break;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(reply_deadline - now).count();
    ::poll(fds.data(), fds.size(), static_cast<int>(std::min<long long>(left, 50) + 1));
  }
  for (std::size_t i = 0; i < clients.size(); ++i) {
    if (clients[i].active() && !clients[i].failure.empty())
      return describe(i, clients[i]) + ": " + clients[i].failure;
  }
  for (std::size_t i = 0; i < clients.size(); ++i) {
    Client& c = clients[i];
    if (!c.active()) continue;
    if (c.replies < c.expected.replies) {
      if (c.closed && (slow_reader_closed() || c.expected.trailing)) continue;
      return describe(i, c) + (c.closed ? ": closed by the proxy early" : ": no reply in time");
    }
  }
  // After QUIT or a protocol error the proxy closes the connection, once the replies are out.
  const auto close_deadline = Clock::now() + kCloseDeadline;
  for (std::size_t i = 0; i < clients.size(); ++i) {
    Client& c = clients[i];
    if (!c.active() || !c.expected.closes) continue;
    while (!c.closed && c.failure.empty() && Clock::now() < close_deadline) {
      pollfd p{c.fd, POLLIN, 0};
      ::poll(&p, 1, 20);
      read_available(c);
    }
    if (!c.failure.empty()) return describe(i, c) + ": " + c.failure;
    if (!c.closed) return describe(i, c) + ": still open after QUIT or a protocol error";
  }
  return "";
}

}  // namespace

SessionHarness::SessionHarness() {
  // The proxy's writes to a client that went away must not kill the process (slotshift-proxy's main does
  // the same).
  std::signal(SIGPIPE, SIG_IGN);
  cluster_.set_recording(false);
  for (auto& port : ports_)
    port = std::make_unique<test::PortReservation>();
  config_.listen = HostPort{"127.0.0.1", ports_.front()->port()};
  config_.seeds = cluster_.addresses();
  config_.threads = 1;
  // Small limits keep memory small and put the limits themselves within reach of the inputs.
  config_.request_timeout = 300ms;
  config_.connect_timeout = 200ms;
  config_.refresh_interval = 1000ms;
  config_.max_clients = 64;
  config_.max_bulk_bytes = 1u << 20;
  config_.max_arguments = 16384;
  config_.max_client_output = 8u << 20;
  config_.max_pipeline = 1000;
  config_.max_held_bytes = 1u << 20;
}

SessionHarness::~SessionHarness() = default;

std::string SessionHarness::run(std::string_view input) {
  if (!cluster_.reset()) return "the scripted cluster did not close its connections in time";
  cluster_.set_recording(false);
  const Plan plan = decode(input, cluster_);
  // The proxy's port changes from one input to the next, so that fewer of the connections to it meet a
  // TIME_WAIT of an earlier one.
  config_.listen.port = ports_[runs_++ % ports_.size()]->port();

  proxy::Proxy proxy(config_);
  if (std::string error = proxy.start(); !error.empty()) return "the proxy did not start: " + error;
  std::string failure;
  const auto ready_deadline = Clock::now() + kReadyDeadline;
  while (!proxy.ready() && Clock::now() < ready_deadline)
    std::this_thread::sleep_for(100us);
  if (!proxy.ready()) failure = "the proxy did not load the slot map in time";

  // Rules only once the map is loaded: a rule for CLUSTER applies to the refreshes that follow.
  for (const Rule& rule : plan.rules)
    cluster_.add_rule(rule);
  std::vector<Client> clients(plan.streams.size());
  if (failure.empty()) {
    const auto slow_reader_closed = [&proxy] {
      return proxy.workers().front()->stats().clients_slow_reader.get() > 0;
    };
    failure = drive(plan, clients, config_, fnv1a(input), slow_reader_closed);
  }
  if (failure.empty()) {
    PingResult result = ping(config_.listen.port);
    if (result.transport) {
      const PingResult again = ping(config_.listen.port);
      if (again.failure.empty())
        result = again;
      else
        result.failure += ", and again: " + again.failure;
    }
    if (!result.failure.empty()) failure = "PING on a fresh connection: " + result.failure;
  }
  for (std::size_t i = 0; i < clients.size() && failure.empty(); ++i) {
    Client& c = clients[i];
    if (!c.active()) continue;
    read_available(c);
    if (!c.failure.empty()) failure = describe(i, c) + ": " + c.failure;
  }
  for (auto& c : clients)
    close_client(c, false);
  proxy.stop();
  proxy.wait();
  return failure;
}

}  // namespace slotshift::fuzz
