// A probe client for move benchmarks: what a client of the moving slots, and of the source and target nodes,
// sees while slots move. Until SIGTERM or SIGINT it loops over:
//   - SET then GET of a probe key in the moving slots, as a cluster client does it: to the node it believes
//     owns the slot, following MOVED (and remembering it) and ASK (ASKING + retry); TRYAGAIN is retried after
//     1 ms; the time of an operation includes every redirect and retry it needed;
//   - PING to the source and to the target: how long each node leaves a client waiting.
// A GET that does not return the value the probe wrote last is an error, as is any error reply other than a
// redirect, and a connection that fails. On exit it prints one JSON object: per series the count, p50, p99,
// p99.9 and max in ms, and the errors, redirects and retries met.
//
//   move_probe --source HOST:PORT --target HOST:PORT --slots FIRST-LAST [--interval-us 500]
#include <hiredis/hiredis.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "common/slot.h"

namespace {

using Clock = std::chrono::steady_clock;
std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) {
  g_stop = true;
}

struct Series {
  std::vector<double> ms;
  void add(double v) { ms.push_back(v); }
  std::string json() {
    std::sort(ms.begin(), ms.end());
    auto q = [&](double p) {
      return ms.empty()
                 ? 0.0
                 : ms[std::min(ms.size() - 1, static_cast<std::size_t>(p * static_cast<double>(ms.size())))];
    };
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "{\"count\": %zu, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, \"max_ms\": %.3f}",
                  ms.size(), q(0.5), q(0.99), q(0.999), ms.empty() ? 0.0 : ms.back());
    return buf;
  }
};

struct Node {
  std::string host;
  int port = 0;
};

Node parse(const std::string& s) {
  const auto colon = s.rfind(':');
  return Node{s.substr(0, colon), std::stoi(s.substr(colon + 1))};
}

class Connections {
 public:
  redisContext* get(const Node& n) {
    const std::string key = n.host + ":" + std::to_string(n.port);
    auto it = conns_.find(key);
    if (it != conns_.end() && it->second && !it->second->err) return it->second;
    if (it != conns_.end() && it->second) redisFree(it->second);
    timeval tv{2, 0};
    redisContext* c = redisConnectWithTimeout(n.host.c_str(), n.port, tv);
    if (c) redisSetTimeout(c, timeval{10, 0});
    conns_[key] = c;
    return c;
  }
  ~Connections() {
    for (auto& [k, c] : conns_)
      if (c) redisFree(c);
  }

 private:
  std::map<std::string, redisContext*> conns_;
};

double since_ms(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

}  // namespace

int main(int argc, char** argv) {
  Node source, target;
  int first = 0, last = 0;
  int interval_us = 500;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--source")
      source = parse(value);
    else if (flag == "--target")
      target = parse(value);
    else if (flag == "--slots") {
      first = std::stoi(value.substr(0, value.find('-')));
      last = std::stoi(value.substr(value.find('-') + 1));
    } else if (flag == "--interval-us")
      interval_us = std::stoi(value);
  }
  if (source.port == 0 || target.port == 0 || last < first) {
    std::fprintf(stderr, "usage: move_probe --source HOST:PORT --target HOST:PORT --slots FIRST-LAST\n");
    return 2;
  }
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);

  // 64 probe keys spread over the moving slots, each with the node the probe believes owns it.
  struct Key {
    std::string name;
    Node owner;
    long long version = 0;
  };
  std::vector<Key> keys;
  // Distinct slots as long as the range has enough of them.
  const int width = last - first + 1;
  std::vector<bool> used(slotshift::kSlotCount);
  for (int n = 0; keys.size() < 64 && n < 10000000; ++n) {
    std::string k = "probe:" + std::to_string(n);
    const int slot = slotshift::key_slot(k);
    if (slot < first || slot > last) continue;
    const int bucket = (slot - first) * 64 / width;
    if (width >= 64 && used[static_cast<std::size_t>(first + bucket)]) continue;
    used[static_cast<std::size_t>(first + bucket)] = true;
    keys.push_back(Key{k, source, 0});
  }

  Connections conns;
  Series ops, src_ping, tgt_ping;
  long long errors = 0, moved = 0, ask = 0, tryagain = 0, wrong = 0;
  std::string first_error;
  auto error = [&](const std::string& what) {
    ++errors;
    if (first_error.empty()) first_error = what;
  };
  // One command for `key`, as a cluster client runs it. Returns the final reply (caller frees) or nullptr.
  auto run = [&](Key& key, std::vector<std::string> args) -> redisReply* {
    Node node = key.owner;
    bool asking = false;
    for (int attempt = 0; attempt < 50; ++attempt) {
      redisContext* c = conns.get(node);
      if (!c || c->err) {
        error("connect " + node.host + ":" + std::to_string(node.port));
        return nullptr;
      }
      if (asking) {
        auto* r = static_cast<redisReply*>(redisCommand(c, "ASKING"));
        if (r) freeReplyObject(r);
      }
      std::vector<const char*> cargv;
      std::vector<size_t> lens;
      for (const auto& a : args) {
        cargv.push_back(a.data());
        lens.push_back(a.size());
      }
      auto* r = static_cast<redisReply*>(
          redisCommandArgv(c, static_cast<int>(cargv.size()), cargv.data(), lens.data()));
      if (!r) {
        error(std::string("connection: ") + c->errstr);
        return nullptr;
      }
      if (r->type != REDIS_REPLY_ERROR) return r;
      const std::string e(r->str, r->len);
      freeReplyObject(r);
      asking = false;
      if (e.rfind("MOVED ", 0) == 0 || e.rfind("ASK ", 0) == 0) {
        const auto addr = e.substr(e.rfind(' ') + 1);
        node = parse(addr);
        if (e[0] == 'M') {
          ++moved;
          key.owner = node;
        } else {
          ++ask;
          asking = true;
        }
        continue;
      }
      if (e.rfind("TRYAGAIN", 0) == 0) {
        ++tryagain;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      error(e);
      return nullptr;
    }
    error("too many redirects for " + key.name);
    return nullptr;
  };
  auto ping = [&](const Node& n, Series& s) {
    const auto t0 = Clock::now();
    redisContext* c = conns.get(n);
    auto* r = c ? static_cast<redisReply*>(redisCommand(c, "PING")) : nullptr;
    if (!r) {
      error("PING " + n.host + ":" + std::to_string(n.port));
      return;
    }
    freeReplyObject(r);
    s.add(since_ms(t0));
  };

  std::size_t i = 0;
  while (!g_stop) {
    auto& key = keys[i++ % keys.size()];
    const auto t0 = Clock::now();
    const std::string value = "v" + std::to_string(++key.version);
    if (auto* r = run(key, {"SET", key.name, value})) {
      freeReplyObject(r);
      if (auto* g = run(key, {"GET", key.name})) {
        if (g->type != REDIS_REPLY_STRING || std::string(g->str, g->len) != value) {
          ++wrong;
          error("GET " + key.name + " did not return what was just written");
        }
        freeReplyObject(g);
      }
    }
    ops.add(since_ms(t0));
    ping(source, src_ping);
    ping(target, tgt_ping);
    std::this_thread::sleep_for(std::chrono::microseconds(interval_us));
  }
  for (auto& ch : first_error)
    if (ch == '"' || ch == '\\' || static_cast<unsigned char>(ch) < 32) ch = ' ';
  std::printf(
      "{\"ops\": %s, \"source_ping\": %s, \"target_ping\": %s, \"errors\": %lld, \"wrong_reads\": %lld, "
      "\"moved\": %lld, \"ask\": %lld, \"tryagain\": %lld, \"first_error\": \"%s\"}\n",
      ops.json().c_str(), src_ping.json().c_str(), tgt_ping.json().c_str(), errors, wrong, moved, ask,
      tryagain, first_error.c_str());
  return 0;
}
