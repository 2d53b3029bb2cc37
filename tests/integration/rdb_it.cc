// The RDB reader against a live cluster node: a dataset of every type is written under one hash tag, the
// node's snapshot is taken the way a replica gets it (PSYNC, both framings), every key is copied back under a
// new name with RESTORE of the payload built from the RDB bytes, and rebuilt under a third name with
// rebuild_commands. Each copy must equal the original by value, TTL, encoding and LFU counter (or LRU idle
// time), as a client would see them. Runs on whatever SLOTSHIFT_SERVER selects (Redis 7.0 by default).
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/rdb.h"
#include "common/slot.h"
#include "tests/integration/fixture.h"

using namespace slotshift;

namespace {

const std::string kTag = "{rdbit}";
const std::int64_t kFarFuture = 4102444800000;  // 2100-01-01 in ms

std::string text(const test::Reply& r) {
  if (!r) return {};
  if (r->type == REDIS_REPLY_INTEGER) return std::to_string(r->integer);
  return r->str ? std::string(r->str, r->len) : std::string();
}

std::int64_t integer(const test::Reply& r) {
  REQUIRE(r);
  if (r->type == REDIS_REPLY_ERROR) FAIL("error reply: " << std::string(r->str, r->len));
  REQUIRE(r->type == REDIS_REPLY_INTEGER);
  return r->integer;
}

// A reply as nested text, for comparisons: "[a, b, [c, 1]]".
std::string flatten(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      return std::to_string(r->integer);
    case REDIS_REPLY_NIL:
      return "(nil)";
    case REDIS_REPLY_ARRAY: {
      std::string out = "[";
      for (std::size_t i = 0; i < r->elements; ++i)
        out += (i ? ", " : "") + flatten(r->element[i]);
      return out + "]";
    }
    case REDIS_REPLY_ERROR:
      return "ERR(" + std::string(r->str, r->len) + ")";
    default:
      return std::string(r->str, r->len);
  }
}

std::vector<std::string> strings(const test::Reply& r) {
  std::vector<std::string> out;
  REQUIRE(r->type == REDIS_REPLY_ARRAY);
  for (std::size_t i = 0; i < r->elements; ++i)
    out.push_back(flatten(r->element[i]));
  return out;
}

bool ok(const test::Reply& r) {
  return r && r->type != REDIS_REPLY_ERROR;
}

std::string info_field(test::Connection& c, const std::string& section, const std::string& field) {
  const auto info = text(c.command({"INFO", section}));
  const auto at = info.find(field + ":");
  if (at == std::string::npos) return {};
  return info.substr(at + field.size() + 1, info.find("\r\n", at) - at - field.size() - 1);
}

// Valkey 9+ sends RDB 11 to a replica that did not say its version, and fails the sync when a hash has field
// TTLs (RDB 11 cannot carry them); a replica that announces its version gets VALKEY080.
bool valkey9(const std::string& valkey_version) {
  return !valkey_version.empty() && std::stoi(valkey_version) >= 9;
}

// The master that serves the tag's slot: the one that does not answer MOVED.
test::Endpoint owner_of_tag(test::LocalCluster& cluster) {
  for (const auto& node : cluster.masters()) {
    test::Connection c(node);
    auto r = c.command({"EXISTS", kTag + "probe"});
    if (r->type == REDIS_REPLY_INTEGER) return node;
  }
  FAIL("no master serves " << kTag);
  return {};
}

// ---------------------------------------------------------------------------------------------------------
// A minimal blocking replica: handshake, PSYNC, then the RDB through a ByteSource that honours both framings.

class Replica {
 public:
  explicit Replica(const test::Endpoint& node) : conn_(node, 30000) {}

  // Sends the handshake and reads up to the start of the RDB. With `eof` the master may stream the RDB
  // (diskless, "$EOF:<mark>"); without it, it saves a file and sends "$<length>".
  void start(bool eof, const std::string& version) {
    send_command({"REPLCONF", "listening-port", "0"});
    REQUIRE(line() == "+OK");
    if (eof) {
      send_command({"REPLCONF", "capa", "eof", "capa", "psync2"});
      REQUIRE(line() == "+OK");
    }
    if (!version.empty()) {
      send_command({"REPLCONF", "version", version});
      REQUIRE(line() == "+OK");
    }
    send_command({"PSYNC", "?", "-1"});
    std::string l;
    do {
      l = line();  // lone newlines (keepalives) may come first
    } while (l.empty());
    REQUIRE_MESSAGE(l.rfind("+FULLRESYNC ", 0) == 0, l);
    do {
      l = line();
    } while (l.empty());
    REQUIRE(l.size() > 1);
    REQUIRE(l[0] == '$');
    if (l.rfind("$EOF:", 0) == 0) {
      mark_ = l.substr(5);
      REQUIRE(mark_.size() == 40);
    } else {
      remaining_ = std::stoll(l.substr(1));
    }
  }

  bool diskless() const { return !mark_.empty(); }
  const std::string& mark() const { return mark_; }

  // The RDB's bytes: what the line reader already holds, then the socket. With "$<length>" the source ends at
  // the RDB's last byte; with "$EOF:" it runs on, and the reader's unread() holds what came after.
  class Source : public rdb::ByteSource {
   public:
    explicit Source(Replica& r) : r_(r) {}
    std::size_t read(char* dst, std::size_t n) override {
      if (r_.remaining_ == 0) return 0;
      if (r_.remaining_ > 0) n = std::min<std::size_t>(n, static_cast<std::size_t>(r_.remaining_));
      std::size_t got = 0;
      if (!r_.in_.empty()) {
        got = std::min(n, r_.in_.size());
        std::memcpy(dst, r_.in_.data(), got);
        r_.in_.erase(0, got);
      } else {
        const ssize_t k = ::recv(r_.conn_.context()->fd, dst, n, 0);
        if (k <= 0) return 0;
        got = static_cast<std::size_t>(k);
      }
      if (r_.remaining_ > 0) r_.remaining_ -= static_cast<long long>(got);
      return got;
    }

   private:
    Replica& r_;
  };

 private:
  void send_command(std::initializer_list<std::string> words) {
    std::string msg = "*" + std::to_string(words.size()) + "\r\n";
    for (const auto& w : words)
      msg += "$" + std::to_string(w.size()) + "\r\n" + w + "\r\n";
    REQUIRE(::send(conn_.context()->fd, msg.data(), msg.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(msg.size()));
  }

  // One line without its CRLF; a lone "\n" keepalive is an empty line.
  std::string line() {
    for (;;) {
      if (!in_.empty() && in_[0] == '\n') {
        in_.erase(0, 1);
        return {};
      }
      const auto crlf = in_.find("\r\n");
      if (crlf != std::string::npos) {
        std::string l = in_.substr(0, crlf);
        in_.erase(0, crlf + 2);
        return l;
      }
      char buf[4096];
      const ssize_t k = ::recv(conn_.context()->fd, buf, sizeof buf, 0);
      REQUIRE_MESSAGE(k > 0, "the master closed the replica connection");
      in_.append(buf, static_cast<std::size_t>(k));
    }
  }

  test::Connection conn_;  // hiredis only for connecting with a timeout; the bytes are ours
  std::string in_;
  std::string mark_;
  long long remaining_ = -1;  // bytes of a "$<length>" payload still to come; -1 for "$EOF:"
};

struct Snapshot {
  rdb::Header header;
  std::vector<rdb::Entry> entries;
};

// Takes the node's snapshot as a replica, keeping the values of the tag's keys.
Snapshot sync_snapshot(const test::Endpoint& node, bool eof, const std::string& version) {
  Replica replica(node);
  replica.start(eof, version);
  CHECK(replica.diskless() == eof);
  Replica::Source source(replica);
  rdb::Reader reader(source);
  REQUIRE_MESSAGE(reader.read_header(), reader.error());
  Snapshot s;
  s.header = reader.header();
  const Slot slot = key_slot(kTag);
  rdb::Entry e;
  for (;;) {
    const auto r = reader.next(e, [&](int, std::string_view key) { return key_slot(key) == slot; });
    REQUIRE_MESSAGE(r != rdb::Result::kError, reader.error());
    if (r == rdb::Result::kEnd) break;
    if (e.kept) s.entries.push_back(e);
  }
  if (replica.diskless()) {
    // The EOF mark follows the RDB; some or all of it may already be in the reader's buffer.
    std::string rest(reader.unread());
    char buf[64];
    while (rest.size() < 40) {
      const auto n = source.read(buf, 40 - rest.size());
      REQUIRE(n > 0);
      rest.append(buf, n);
    }
    CHECK(rest.substr(0, 40) == replica.mark());
  } else {
    CHECK(reader.unread().empty());
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// The dataset

std::string noise(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string out(n, '\0');
  for (auto& c : out)
    c = static_cast<char>(gen() & 0xff);
  return out;
}

struct Dataset {
  std::vector<std::string> names;  // without the tag
  bool field_ttls = false;
};

Dataset write_dataset(test::Connection& c) {
  Dataset d;
  auto run = [&](std::vector<std::string> args) {
    auto r = c.command(args);
    REQUIRE_MESSAGE(ok(r), args[0] << " " << args[1] << ": " << flatten(r.get()));
  };
  auto key = [&](const std::string& name) {
    d.names.push_back(name);
    return kTag + name;
  };
  // Small thresholds, so that a few elements cross into the other encodings.
  for (auto [name, value] :
       std::vector<std::pair<std::string, std::string>>{{"hash-max-listpack-entries", "16"},
                                                        {"zset-max-listpack-entries", "16"},
                                                        {"set-max-intset-entries", "16"},
                                                        {"set-max-listpack-entries", "16"},
                                                        {"list-max-listpack-size", "8"},
                                                        {"stream-node-max-entries", "4"}}) {
    c.command({"CONFIG", "SET", name, value});  // set-max-listpack-entries is 7.2+
  }

  run({"SET", key("str:short"), "hello"});
  run({"SET", key("str:int"), "12345"});
  run({"SET", key("str:negative"), "-2000000000"});
  run({"SET", key("str:empty"), ""});
  run({"SET", key("str:binary"), std::string("\0\xff\r\nzero", 8)});
  std::string lzf;
  for (int i = 0; i < 200; ++i)
    lzf += "compressible-";
  run({"SET", key("str:lzf"), lzf});
  run({"SET", key("str:big"), noise(300000, 1)});  // far above the chunk size: SET then many APPENDs
  run({"SET", key("str:ttl"), "with a ttl", "PXAT", std::to_string(kFarFuture + 1)});

  std::vector<std::string> small_list = {"RPUSH", key("list:small"), "a", "b", "1", "-100", "1234567890123"};
  run(small_list);
  c.command({"CONFIG", "SET", "list-compress-depth", "1"});
  std::vector<std::string> big_list = {"RPUSH", key("list:big")};
  for (int i = 0; i < 3000; ++i)
    big_list.push_back("item-" + std::to_string(i) + std::string(static_cast<std::size_t>(i % 50), 'z'));
  run(big_list);
  c.command({"CONFIG", "SET", "list-compress-depth", "0"});
  run({"DEBUG", "QUICKLIST-PACKED-THRESHOLD", "100"});
  run({"RPUSH", key("list:plain"), "x", std::string(500, 'P'), "y", noise(200, 2), "z"});
  run({"DEBUG", "QUICKLIST-PACKED-THRESHOLD", std::to_string(1 << 30)});
  run({"RPUSH", key("list:ttl"), "1", "2"});
  run({"PEXPIREAT", kTag + "list:ttl", std::to_string(kFarFuture + 2)});

  run({"SADD", key("set:intset"), "1", "2", "-3", "70000", "5000000000"});
  run({"SADD", key("set:listpack"), "apple", "banana", "42"});
  std::vector<std::string> big_set = {"SADD", key("set:hashtable")};
  for (int i = 0; i < 3000; ++i)
    big_set.push_back("member-" + std::to_string(i));
  run(big_set);
  std::vector<std::string> int_set = {"SADD", key("set:integers")};
  for (int i = 0; i < 100; ++i)
    int_set.push_back(std::to_string(i * 7919 - 100000));
  run(int_set);

  run({"ZADD", key("zset:small"), "1", "one", "0.5", "half", "-2.25", "neg", "1e300", "big",
       "0.33333333333333331", "third"});
  std::vector<std::string> big_zset = {
      "ZADD",  key("zset:skiplist"), "inf", "pinf", "-inf", "ninf", "5e-324", "tiny", "0.1",
      "tenth", "3.141592653589793",  "pi"};
  for (int i = 0; i < 3000; ++i) {
    big_zset.push_back(std::to_string(i) + "." + std::to_string(i % 7) + "e-3");
    big_zset.push_back("m" + std::to_string(i));
  }
  run(big_zset);

  run({"HSET", key("hash:small"), "name", "slot", "count", "12", "empty", ""});
  std::vector<std::string> big_hash = {"HSET", key("hash:big")};
  for (int i = 0; i < 3000; ++i) {
    big_hash.push_back("field-" + std::to_string(i));
    big_hash.push_back(i % 3 ? std::to_string(i) : "value-" + std::to_string(i));
  }
  run(big_hash);
  run({"HSET", key("hash:longvalue"), "short", "x", "long", std::string(1000, 'L')});

  // Field TTLs where the server has them (Redis 7.4+, Valkey 9+).
  auto probe = c.command({"HPEXPIRETIME", kTag + "none", "FIELDS", "1", "f"});
  d.field_ttls = ok(probe);
  if (d.field_ttls) {
    run({"HSET", key("hash:ttl-small"), "a", "1", "b", "2", "c", "3"});
    run({"HPEXPIREAT", kTag + "hash:ttl-small", std::to_string(kFarFuture + 10), "FIELDS", "2", "a", "c"});
    std::vector<std::string> h = {"HSET", key("hash:ttl-big")};
    for (int i = 0; i < 100; ++i) {
      h.push_back("f" + std::to_string(i));
      h.push_back("v" + std::to_string(i));
    }
    run(h);
    run({"HPEXPIREAT", kTag + "hash:ttl-big", std::to_string(kFarFuture + 20), "FIELDS", "3", "f1", "f2",
         "f3"});
    run({"HPEXPIREAT", kTag + "hash:ttl-big", std::to_string(kFarFuture + 30), "FIELDS", "1", "f50"});
    run({"PEXPIREAT", kTag + "hash:ttl-big", std::to_string(kFarFuture + 40)});
  }

  const std::string s = key("stream:s");
  for (int i = 1; i <= 12; ++i)
    run({"XADD", s, std::to_string(i) + "-1", "n", std::to_string(i), "payload",
         std::string(static_cast<std::size_t>(i), 'p')});
  run({"XDEL", s, "3-1", "8-1"});
  run({"XGROUP", "CREATE", s, "g1", "0"});
  run({"XREADGROUP", "GROUP", "g1", "alice", "COUNT", "3", "STREAMS", s, ">"});
  run({"XREADGROUP", "GROUP", "g1", "bob", "COUNT", "2", "STREAMS", s, ">"});
  run({"XACK", s, "g1", "2-1"});
  run({"XGROUP", "CREATE", s, "g2", "6-1"});
  run({"XGROUP", "CREATECONSUMER", s, "g2", "carol"});
  run({"XGROUP", "CREATE", kTag + "stream:empty", "g", "$", "MKSTREAM"});
  d.names.push_back("stream:empty");

  // An expired key that is still in the keyspace (active expiry off): in the snapshot, but never copied.
  run({"DEBUG", "SET-ACTIVE-EXPIRE", "0"});
  run({"SET", kTag + "expired", "gone", "PX", "1"});
  std::this_thread::sleep_for(std::chrono::milliseconds(20));

  // LFU counters above the initial 5 for a few keys.
  for (int i = 0; i < 8; ++i) {
    c.command({"GET", kTag + "str:short"});
    c.command({"LRANGE", kTag + "list:small", "0", "0"});
  }
  return d;
}

// ---------------------------------------------------------------------------------------------------------
// Copying and comparing

// RESTOREs a value from its RDB bytes under `name`, with its TTL and LFU counter or LRU idle time.
void restore(test::Connection& c, const rdb::Entry& e, const rdb::Header& h, const std::string& name) {
  std::vector<std::string> args = {"RESTORE",
                                   name,
                                   std::to_string(e.expire_ms < 0 ? 0 : e.expire_ms),
                                   rdb::dump_payload(e.type, e.value, static_cast<std::uint16_t>(h.version)),
                                   "REPLACE",
                                   "ABSTTL"};
  if (e.freq) {
    args.insert(args.end(), {"FREQ", std::to_string(*e.freq)});
  } else if (e.idle_s) {
    args.insert(args.end(), {"IDLETIME", std::to_string(*e.idle_s)});
  }
  auto r = c.command(args);
  REQUIRE_MESSAGE(text(r) == "OK", "RESTORE " << name << ": " << flatten(r.get()));
}

// Rebuilds a value with ordinary commands under `name` (the caller's DEL first, its expiry after). False for
// types that cannot be rebuilt.
bool rebuild(test::Connection& c, const rdb::Entry& e, const rdb::Header& h, const std::string& name,
             std::size_t chunk, std::size_t& commands) {
  c.command({"DEL", name});
  std::vector<std::vector<std::string>> cmds;
  std::string error;
  if (!rdb::rebuild_commands(
          name, e.type, e.value, h, chunk,
          [&](std::vector<std::string>&& cmd) { cmds.push_back(std::move(cmd)); }, error)) {
    INFO(error);
    CHECK((e.type == rdb::kStreamListpacks2 || e.type == rdb::kStreamListpacks3));
    return false;
  }
  for (const auto& r : c.pipeline(cmds))
    REQUIRE_MESSAGE(ok(r), flatten(r.get()));
  if (e.expire_ms >= 0) REQUIRE(integer(c.command({"PEXPIREAT", name, std::to_string(e.expire_ms)})) == 1);
  commands = cmds.size();
  return true;
}

// Everything a client can read of a key's value, as text.
std::vector<std::string> value_of(test::Connection& c, const std::string& key) {
  const auto type = text(c.command({"TYPE", key}));
  std::vector<std::string> out = {type};
  auto add = [&](std::vector<std::string> v, bool sort) {
    if (sort) std::sort(v.begin(), v.end());
    out.insert(out.end(), v.begin(), v.end());
  };
  if (type == "string") {
    out.push_back(text(c.command({"GET", key})));
  } else if (type == "list") {
    add(strings(c.command({"LRANGE", key, "0", "-1"})), false);
  } else if (type == "set") {
    add(strings(c.command({"SMEMBERS", key})), true);
  } else if (type == "zset") {
    add(strings(c.command({"ZRANGE", key, "0", "-1", "WITHSCORES"})), false);
  } else if (type == "hash") {
    auto pairs = strings(c.command({"HGETALL", key}));
    std::vector<std::string> joined;
    for (std::size_t i = 0; i + 1 < pairs.size(); i += 2) {
      std::string ttl;
      auto t = c.command({"HPEXPIRETIME", key, "FIELDS", "1", pairs[i]});
      if (ok(t)) ttl = " ttl " + flatten(t.get());
      joined.push_back(pairs[i] + "=" + pairs[i + 1] + ttl);
    }
    add(joined, true);
  } else if (type == "stream") {
    out.push_back(flatten(c.command({"XRANGE", key, "-", "+"}).get()));
    // XINFO STREAM: length, radix tree size, last/first IDs, entries-added, max-deleted-entry-id, groups.
    out.push_back(flatten(c.command({"XINFO", "STREAM", key}).get()));
    auto groups = c.command({"XINFO", "GROUPS", key});
    out.push_back(flatten(groups.get()));
    for (std::size_t g = 0; g < groups->elements; ++g) {
      const redisReply* group = groups->element[g];
      std::string name;
      for (std::size_t i = 0; i + 1 < group->elements; i += 2) {
        if (flatten(group->element[i]) == "name") name = flatten(group->element[i + 1]);
      }
      out.push_back(flatten(c.command({"XPENDING", key, name}).get()));
      // Extended form: ID, consumer, idle ms (a clock, left out), delivery count.
      auto pel = c.command({"XPENDING", key, name, "-", "+", "100"});
      for (std::size_t i = 0; i < pel->elements; ++i) {
        const redisReply* p = pel->element[i];
        out.push_back(flatten(p->element[0]) + " " + flatten(p->element[1]) + " " + flatten(p->element[3]));
      }
      auto consumers = c.command({"XINFO", "CONSUMERS", key, name});
      for (std::size_t i = 0; i < consumers->elements; ++i) {
        const redisReply* cons = consumers->element[i];
        std::string line;
        for (std::size_t j = 0; j + 1 < cons->elements; j += 2) {
          const auto field = flatten(cons->element[j]);
          if (field == "name" || field == "pending")
            line += field + "=" + flatten(cons->element[j + 1]) + " ";
        }
        out.push_back(line);
      }
    }
  } else {
    FAIL("unexpected type " << type << " for " << key);
  }
  return out;
}

}  // namespace

TEST_CASE(
    "every type through the RDB: RESTORE of the RDB bytes, and rebuilt as commands, equal the originals") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto node = owner_of_tag(cluster);
  test::Connection c(node);
  const std::string valkey = info_field(c, "server", "valkey_version");
  const std::string server =
      valkey.empty() ? "Redis " + info_field(c, "server", "redis_version") : "Valkey " + valkey;
  INFO(server);
  c.command({"CONFIG", "SET", "repl-diskless-sync-delay", "0"});
  c.command({"CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"});
  c.command({"CONFIG", "SET", "lfu-decay-time", "0"});  // counters then stay as the RDB recorded them

  const Dataset d = write_dataset(c);
  const std::string version = valkey9(valkey) ? valkey : "";
  const Snapshot snap = sync_snapshot(node, true, version);
  std::map<std::string, const rdb::Entry*> by_name;
  for (const auto& e : snap.entries) {
    CHECK(e.db == 0);
    by_name[e.key.substr(kTag.size())] = &e;
  }
  CHECK(by_name.size() == d.names.size() + 1);  // and the expired key

  // The expired key is in the snapshot with its past expiry; a move skips it.
  REQUIRE(by_name.count("expired") == 1);
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  CHECK(by_name["expired"]->expire_ms < now_ms);
  c.command({"DEBUG", "SET-ACTIVE-EXPIRE", "1"});

  std::map<std::string, int> original_freq;
  for (const auto& name : d.names)
    original_freq[name] = static_cast<int>(integer(c.command({"OBJECT", "FREQ", kTag + name})));
  // Rebuilt lists get plain nodes where the originals have them.
  c.command({"DEBUG", "QUICKLIST-PACKED-THRESHOLD", "100"});
  std::size_t rebuilt = 0;
  for (const auto& name : d.names) {
    INFO("key " << name);
    REQUIRE(by_name.count(name) == 1);
    const rdb::Entry& e = *by_name[name];
    const std::string copy = kTag + "copy:" + name, again = kTag + "rebuilt:" + name;
    // The snapshot has the original's LFU counter, and RESTORE gives it to the copy; checked before anything
    // reads either key.
    REQUIRE(e.freq.has_value());
    CHECK(int{*e.freq} == original_freq[name]);
    restore(c, e, snap.header, copy);
    CHECK(integer(c.command({"OBJECT", "FREQ", copy})) == original_freq[name]);
    std::size_t commands = 0;
    const bool rebuilt_ok = rebuild(c, e, snap.header, again, 16 * 1024, commands);
    rebuilt += rebuilt_ok;
    if (name == "str:big" || name == "list:big" || name == "set:hashtable" || name == "hash:big" ||
        name == "zset:skiplist") {
      CHECK(commands > 1);  // chunked
    }

    const auto original = value_of(c, kTag + name);
    CHECK(value_of(c, copy) == original);
    const auto ttl = text(c.command({"PEXPIRETIME", kTag + name}));
    CHECK(text(c.command({"PEXPIRETIME", copy})) == ttl);
    const auto encoding = text(c.command({"OBJECT", "ENCODING", kTag + name}));
    CHECK(text(c.command({"OBJECT", "ENCODING", copy})) == encoding);
    if (rebuilt_ok) {
      CHECK(value_of(c, again) == original);
      CHECK(text(c.command({"PEXPIRETIME", again})) == ttl);
      CHECK(text(c.command({"OBJECT", "ENCODING", again})) == encoding);
    }
  }
  c.command({"DEBUG", "QUICKLIST-PACKED-THRESHOLD", std::to_string(1 << 30)});
  CHECK(rebuilt == d.names.size() - 2);  // all but the two streams

  {
    // The same snapshot in the other framing: without "capa eof" the master saves a file and sends
    // "$<length>"; Valkey 9 then writes VALKEY080.
    const Snapshot disk = sync_snapshot(node, false, "");
    // The originals, their copies, and all but the two streams rebuilt.
    CHECK(disk.entries.size() == 3 * d.names.size() - 2);
    CHECK(disk.header.flavor == (valkey9(valkey) ? rdb::Flavor::kValkey : rdb::Flavor::kRedis));
    std::map<std::string, const rdb::Entry*> disk_by_name;
    for (const auto& e : disk.entries)
      disk_by_name[e.key] = &e;
    for (const auto& e : snap.entries) {
      INFO("key " << e.key);
      if (e.key == kTag + "expired") continue;  // active expiry has deleted it since
      REQUIRE(disk_by_name.count(e.key) == 1);
      CHECK(disk_by_name[e.key]->type == e.type);
      CHECK(disk_by_name[e.key]->value == e.value);
      CHECK(disk_by_name[e.key]->expire_ms == e.expire_ms);
    }
  }
}

TEST_CASE("LRU idle times survive the copy") {
  auto& cluster = test::shared_cluster(3, 0);
  const auto node = owner_of_tag(cluster);
  test::Connection c(node);
  const std::string valkey = info_field(c, "server", "valkey_version");
  c.command({"CONFIG", "SET", "repl-diskless-sync-delay", "0"});
  c.command({"CONFIG", "SET", "maxmemory-policy", "allkeys-lru"});
  // Keys that have been idle for a known time: RESTORE sets it.
  c.command({"SET", kTag + "lru:src", "value"});
  const auto payload = text(c.command({"DUMP", kTag + "lru:src"}));
  for (auto [name, idle] :
       std::vector<std::pair<std::string, std::string>>{{"lru:old", "5000"}, {"lru:older", "90000"}}) {
    REQUIRE(text(c.command({"RESTORE", kTag + name, "0", payload, "REPLACE", "IDLETIME", idle})) == "OK");
  }
  const Snapshot snap = sync_snapshot(node, true, valkey9(valkey) ? valkey : std::string());
  int checked = 0;
  for (const auto& e : snap.entries) {
    if (e.key != kTag + "lru:old" && e.key != kTag + "lru:older") continue;
    INFO("key " << e.key);
    REQUIRE(e.idle_s.has_value());
    CHECK_FALSE(e.freq.has_value());
    const auto original = integer(c.command({"OBJECT", "IDLETIME", e.key}));
    CHECK(std::llabs(static_cast<long long>(*e.idle_s) - original) <= 2);
    const std::string copy = kTag + "copy:" + e.key.substr(kTag.size());
    restore(c, e, snap.header, copy);
    CHECK(std::llabs(integer(c.command({"OBJECT", "IDLETIME", copy})) - original) <= 2);
    CHECK(text(c.command({"GET", copy})) == "value");
    ++checked;
  }
  CHECK(checked == 2);
  c.command({"CONFIG", "SET", "maxmemory-policy", "noeviction"});
}
