// The RDB reader against files written by real servers (tests/data/rdb/, see capture.sh there): every key of
// every file is checked against what the server itself said about it (DUMP payload, PEXPIRETIME, OBJECT
// FREQ/IDLETIME). Hand-made bytes appear only for what no server here writes (seconds expiry, module values)
// and for inputs no server writes at all (huge lengths).
#include "common/rdb.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/crc64.h"

using namespace slotshift;
using namespace slotshift::rdb;

namespace {

std::string data_path(const std::string& name) {
  return std::string(SLOTSHIFT_TEST_DATA) + "/rdb/" + name;
}

bool exists(const std::string& name) {
  return std::ifstream(data_path(name)).good();
}

std::string read_file(const std::string& name) {
  std::ifstream in(data_path(name), std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "missing fixture " << name);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string unhex(std::string_view hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

struct ManifestKey {
  int db = 0;
  std::string key;
  std::int64_t expire_ms = -1;
  bool expire_approximate = false;  // Redis 6.0 has no PEXPIRETIME: the capture computed it from PTTL
  std::int64_t meta = -1;           // OBJECT FREQ or IDLETIME; -1 unknown
  std::optional<std::string> dump;
};

struct Manifest {
  std::vector<ManifestKey> keys;
  std::vector<std::string> functions;
};

Manifest read_manifest(const std::string& name) {
  Manifest m;
  std::istringstream in(read_file(name));
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::size_t p = 0;
    for (;;) {
      const auto t = line.find('\t', p);
      f.push_back(line.substr(p, t == std::string::npos ? std::string::npos : t - p));
      if (t == std::string::npos) break;
      p = t + 1;
    }
    if (f[0] == "function") {
      m.functions.push_back(unhex(f[1]));
      continue;
    }
    REQUIRE(f.size() == 6);
    ManifestKey k;
    k.db = std::stoi(f[1]);
    k.key = unhex(f[2]);
    k.expire_approximate = f[3][0] == '~';
    k.expire_ms = std::stoll(f[3].substr(k.expire_approximate ? 1 : 0));
    k.meta = std::stoll(f[4]);
    if (f[5] != "-") k.dump = unhex(f[5]);
    m.keys.push_back(std::move(k));
  }
  return m;
}

struct Parsed {
  Result result = Result::kError;
  Header header;
  std::vector<Entry> entries;
  std::map<std::string, std::string> aux;
  std::vector<std::string> functions;
  std::string error;
  std::string unread;
};

Parsed parse(
    std::string_view bytes, std::size_t max_read = SIZE_MAX, Limits limits = {},
    const std::function<bool(int, std::string_view)>& want = [](int, std::string_view) { return true; }) {
  MemorySource src(bytes, max_read);
  Reader reader(src, limits);
  Parsed p;
  if (!reader.read_header()) {
    p.error = reader.error();
    return p;
  }
  p.header = reader.header();
  Entry e;
  for (;;) {
    p.result = reader.next(e, want);
    if (p.result != Result::kEntry) break;
    p.entries.push_back(e);
  }
  p.aux = reader.aux();
  p.functions = reader.functions();
  p.error = reader.error();
  p.unread = std::string(reader.unread());
  return p;
}

const Entry* find(const Parsed& p, int db, const std::string& key) {
  for (const auto& e : p.entries) {
    if (e.db == db && e.key == key) return &e;
  }
  return nullptr;
}

// The servers of the fixtures, with the header each writes to disk.
struct Server {
  std::string name;
  Header header;
};
const std::vector<Server> kServers = {
    {"redis-6.0", {Flavor::kRedis, 9}},   {"redis-7.0", {Flavor::kRedis, 10}},
    {"redis-8.0", {Flavor::kRedis, 12}},  {"valkey-8.0", {Flavor::kRedis, 11}},
    {"valkey-8.1", {Flavor::kRedis, 11}}, {"valkey-9.1", {Flavor::kValkey, 80}},
};

// Checks every key of `file` against `manifest`: same key set, and per key the type and value bytes (through
// the DUMP payload the server produced for it), the value's size, the TTL and the LFU/LRU metadata.
void check_against_manifest(const std::string& file, const std::string& manifest_name, bool lfu) {
  INFO("file " << file << ", manifest " << manifest_name);
  const auto bytes = read_file(file);
  const auto m = read_manifest(manifest_name);
  const auto p = parse(bytes);
  REQUIRE_MESSAGE(p.result == Result::kEnd, p.error);
  CHECK(p.entries.size() == m.keys.size());
  std::set<std::pair<int, std::string>> seen;
  for (const auto& e : p.entries) {
    CHECK_MESSAGE(seen.insert({e.db, e.key}).second, "key twice: " << e.key);
    CHECK(e.kept);
    CHECK(e.value.size() == e.value_size);
  }
  for (const auto& k : m.keys) {
    INFO("key '" << k.key << "' in db " << k.db);
    const Entry* e = find(p, k.db, k.key);
    REQUIRE(e != nullptr);
    if (k.expire_approximate) {
      CHECK(std::llabs(e->expire_ms - k.expire_ms) <= 20);
    } else {
      CHECK(e->expire_ms == k.expire_ms);
    }
    if (lfu) {
      CHECK_FALSE(e->idle_s.has_value());
      REQUIRE(e->freq.has_value());
      if (k.meta >= 0) CHECK(int{*e->freq} == k.meta);
    } else {
      CHECK_FALSE(e->freq.has_value());
      REQUIRE(e->idle_s.has_value());
      // OBJECT IDLETIME was read just before SAVE; both have a resolution of a second.
      CHECK(std::llabs(static_cast<long long>(*e->idle_s) - k.meta) <= 2);
    }
    if (k.dump) {
      const std::string& dump = *k.dump;
      REQUIRE(dump.size() >= 11);
      const auto version = static_cast<std::uint16_t>(static_cast<unsigned char>(dump[dump.size() - 10]) |
                                                      static_cast<unsigned char>(dump[dump.size() - 9]) << 8);
      CHECK(int{e->type} == static_cast<unsigned char>(dump[0]));
      CHECK(e->value_size == dump.size() - 11);
      CHECK(dump_payload(e->type, e->value, version) == dump);
    }
  }
  CHECK(p.functions == m.functions);
}

// Bytes from numbers, for the few inputs built by hand.
std::string bytes_of(std::initializer_list<int> v) {
  std::string out;
  for (int c : v)
    out.push_back(static_cast<char>(c));
  return out;
}

// A short RDB string: 6-bit length, then the bytes.
std::string rdb_str(std::string_view s) {
  REQUIRE(s.size() < 64);
  return static_cast<char>(s.size()) + std::string(s);
}

// Appends the header, `body` and the EOF opcode with its checksum: an RDB as a server would frame it.
std::string framed(std::string_view header, std::string_view body) {
  std::string out(header);
  out.append(body);
  out.push_back(static_cast<char>(0xff));
  const auto crc = crc64(0, out);
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>((crc >> (8 * i)) & 0xff));
  return out;
}

struct Rebuilt {
  bool ok = false;
  std::string error;
  std::vector<std::vector<std::string>> commands;
};

Rebuilt rebuild(const Entry& e, const Header& h, std::size_t chunk = 1 << 20) {
  Rebuilt r;
  r.ok = rebuild_commands(
      e.key, e.type, e.value, h, chunk,
      [&](std::vector<std::string>&& c) { r.commands.push_back(std::move(c)); }, r.error);
  return r;
}

// The arguments after the key of every command named `name`, in order.
std::vector<std::string> args_of(const Rebuilt& r, const std::string& name) {
  std::vector<std::string> out;
  for (const auto& c : r.commands) {
    if (c[0] == name) out.insert(out.end(), c.begin() + 2, c.end());
  }
  return out;
}

}  // namespace

TEST_CASE("crc64: the catalogue check value, and running sums") {
  CHECK(crc64(0, std::string_view("123456789")) == 0xe9c6d914c4b8d9caull);
  CHECK(crc64(0, std::string_view()) == 0);
  std::string s;
  for (int i = 0; i < 1000; ++i)
    s.push_back(static_cast<char>(i * 37 + 11));
  const auto whole = crc64(0, s);
  for (std::size_t cut : {0, 1, 7, 8, 9, 500, 999, 1000})
    CHECK(crc64(crc64(0, s.data(), cut), s.data() + cut, s.size() - cut) == whole);
  CHECK(crc64(0, s.substr(0, 999) + "x") != whole);
}

TEST_CASE("every key of every server's RDB, as the server described it") {
  for (const auto& server : kServers) {
    SUBCASE(server.name.c_str()) {
      const auto p = parse(read_file(server.name + ".rdb"));
      REQUIRE_MESSAGE(p.result == Result::kEnd, p.error);
      CHECK(p.header.flavor == server.header.flavor);
      CHECK(p.header.version == server.header.version);
      CHECK(p.aux.count("ctime") == 1);
      CHECK(p.aux.at("redis-bits") == "64");
      CHECK(p.unread.empty());
      check_against_manifest(server.name + ".rdb", server.name + ".manifest", true);
      check_against_manifest(server.name + "-lru.rdb", server.name + "-lru.manifest", false);
      // Cluster mode: Redis 7.4+ puts a SLOT_INFO opcode before each slot's keys, Valkey 8+ a "slot-info" aux
      // field (slot, keys, keys with a TTL[, keys with volatile fields]).
      check_against_manifest(server.name + "-cluster.rdb", server.name + "-cluster.manifest", true);
      const auto cluster = parse(read_file(server.name + "-cluster.rdb"));
      const bool valkey8 = server.name.rfind("valkey-", 0) == 0;
      CHECK(cluster.aux.count("slot-info") == (valkey8 ? 1 : 0));
      if (valkey8) CHECK(cluster.aux.at("slot-info").rfind("15495,2,0", 0) == 0);  // the last slot written

      // The dataset has every kind of value this server writes.
      std::set<int> types;
      for (const auto& e : p.entries)
        types.insert(e.type);
      std::set<int> expected = {kString,    kSet,          kHash,         kZset2,
                                kSetIntset, kHashListpack, kZsetListpack, kListQuicklist2};
      if (server.name == "redis-6.0") {
        // Before RDB 10: ziplists, quicklists of ziplists, streams v1.
        expected = {kString,      kSet,         kHash,          kZset2,          kSetIntset,
                    kHashZiplist, kZsetZiplist, kListQuicklist, kStreamListpacks};
      } else if (server.name == "redis-7.0") {
        expected.insert(kStreamListpacks2);  // 7.0 has no listpack sets, and streams v2
      } else {
        expected.insert({kStreamListpacks3, kSetListpack});
      }
      if (server.name == "redis-8.0") expected.insert({kRedisHashMetadata, kRedisHashListpackEx});
      if (server.name == "valkey-9.1") expected.insert(kValkeyHash2);
      CHECK(types == expected);
    }
  }
}

TEST_CASE("the same datasets as a diskless replica receives them") {
  for (const auto& server : kServers) {
    SUBCASE(server.name.c_str()) {
      const std::string file = server.name + "-sync.rdb";
      const auto p = parse(read_file(file));
      REQUIRE_MESSAGE(p.result == Result::kEnd, p.error);
      // Valkey 9 sends RDB 11 to a replica that did not say its version; the others send what they save.
      const Header expected = server.name == "valkey-9.1" ? Header{Flavor::kRedis, 11} : server.header;
      CHECK(p.header.flavor == expected.flavor);
      CHECK(p.header.version == expected.version);
      CHECK(p.aux.count("repl-id") == 1);
      CHECK(p.aux.count("repl-offset") == 1);
      const std::string own = server.name + "-sync.manifest";
      check_against_manifest(file, exists(own) ? own : server.name + ".manifest", true);
    }
  }
  SUBCASE("valkey-9.1 after REPLCONF version") {
    const auto p = parse(read_file("valkey-9.1-sync-versioned.rdb"));
    REQUIRE_MESSAGE(p.result == Result::kEnd, p.error);
    CHECK(p.header.flavor == Flavor::kValkey);
    CHECK(p.header.version == 80);
    check_against_manifest("valkey-9.1-sync-versioned.rdb", "valkey-9.1.manifest", true);
  }
}

TEST_CASE("exact bytes of a few values (Redis 7.0.15)") {
  const auto p = parse(read_file("redis-7.0.rdb"));
  REQUIRE(p.result == Result::kEnd);
  auto value = [&](const std::string& key) {
    const Entry* e = find(p, 0, key);
    REQUIRE(e != nullptr);
    return e->value;
  };
  CHECK(value("str:short") == "\x05hello");
  CHECK(value("str:int8") == std::string("\xc0\xf9", 2));       // -7, 8-bit integer encoding
  CHECK(value("str:int16") == std::string("\xc1\x39\x30", 3));  // 12345, little-endian
  CHECK(value("str:int32") == std::string("\xc2\x00\x94\x35\x77", 5));
  CHECK(value("str:int64") ==
        "\x0e"
        "12345678901234");  // too big for an integer encoding
  CHECK(value("str:empty") == std::string("\x00", 1));
  CHECK(static_cast<unsigned char>(value("str:lzf")[0]) == 0xc3);  // LZF
  // Keys are decoded: integer-encoded and compressed keys come out as the text the client wrote.
  CHECK(find(p, 0, "9999") != nullptr);
  CHECK(find(p, 0, "-1") != nullptr);
  CHECK(find(p, 0, "key:" + std::string(100, 'k')) != nullptr);
  CHECK(find(p, 1, "db1:key") != nullptr);
  CHECK(find(p, 0, "db1:key") == nullptr);
  const Entry* ttl = find(p, 0, "str:ttl");
  REQUIRE(ttl != nullptr);
  CHECK(ttl->expire_ms == 4102444800123);
  const Entry* expired = find(p, 0, "str:expired");  // expired keys are in snapshots; the caller skips them
  REQUIRE(expired != nullptr);
  CHECK(expired->expire_ms > 0);
  CHECK(expired->expire_ms < 4102444800000);
  REQUIRE(p.functions.size() == 1);
  CHECK(p.functions[0].rfind("#!lua name=rdbtest\n", 0) == 0);
  CHECK(p.aux.at("redis-ver") == "7.0.15");
}

TEST_CASE("a source that returns one byte at a time gives the same result as a big-chunk one") {
  for (const std::string file :
       {"redis-6.0.rdb", "redis-7.0.rdb", "redis-8.0.rdb", "valkey-9.1.rdb", "valkey-9.1-sync.rdb"}) {
    INFO(file);
    const auto bytes = read_file(file);
    const auto whole = parse(bytes);
    REQUIRE(whole.result == Result::kEnd);
    for (std::size_t chunk : {1, 3, 7, 4096}) {
      const auto p = parse(bytes, chunk);
      REQUIRE_MESSAGE(p.result == Result::kEnd, p.error);
      REQUIRE(p.entries.size() == whole.entries.size());
      for (std::size_t i = 0; i < p.entries.size(); ++i) {
        CHECK(p.entries[i].key == whole.entries[i].key);
        CHECK(p.entries[i].value == whole.entries[i].value);
        CHECK(p.entries[i].expire_ms == whole.entries[i].expire_ms);
        CHECK(p.entries[i].freq == whole.entries[i].freq);
      }
      CHECK(p.aux == whole.aux);
      CHECK(p.functions == whole.functions);
    }
  }
}

TEST_CASE("values that are not wanted are walked, not kept") {
  const auto bytes = read_file("redis-8.0.rdb");
  const auto all = parse(bytes);
  int asked = 0;
  const auto some = parse(bytes, SIZE_MAX, {}, [&](int db, std::string_view key) {
    ++asked;
    return db == 0 && key.substr(0, 4) == "str:";
  });
  REQUIRE(some.result == Result::kEnd);
  CHECK(asked == static_cast<int>(all.entries.size()));
  REQUIRE(some.entries.size() == all.entries.size());
  int kept = 0;
  for (std::size_t i = 0; i < some.entries.size(); ++i) {
    const auto& e = some.entries[i];
    CHECK(e.value_size == all.entries[i].value_size);
    if (e.key.substr(0, 4) == "str:" && e.db == 0) {
      ++kept;
      CHECK(e.kept);
      CHECK(e.value == all.entries[i].value);
    } else {
      CHECK_FALSE(e.kept);
      CHECK(e.value.empty());
    }
  }
  CHECK(kept == 12);
}

TEST_CASE("the want callback sees the key's TTL and LFU counter, so it can decline expired keys") {
  const auto bytes = read_file("redis-7.0.rdb");
  MemorySource src(bytes);
  Reader reader(src);
  REQUIRE(reader.read_header());
  Entry e;
  std::map<std::string, std::int64_t> seen;
  int freq_seen = 0;
  const std::int64_t now = 4000000000000;  // 2096: after any capture, before the TTLs of 2100
  const auto want = [&](int, std::string_view key) {
    seen[std::string(key)] = e.expire_ms;
    freq_seen += e.freq.has_value();
    return e.expire_ms < 0 || e.expire_ms > now;
  };
  Result r;
  while ((r = reader.next(e, want)) == Result::kEntry) {
    CHECK(e.kept == (e.key != "str:expired"));
  }
  REQUIRE(r == Result::kEnd);
  CHECK(seen.at("str:ttl") == 4102444800123);
  CHECK(seen.at("str:short") == -1);
  CHECK(seen.at("str:expired") < now);
  CHECK(freq_seen == static_cast<int>(seen.size()));
  // Without a callback every value is kept.
  const auto all = parse(bytes, SIZE_MAX, {}, nullptr);
  REQUIRE(all.result == Result::kEnd);
  for (const auto& entry : all.entries)
    CHECK(entry.kept);
}

TEST_CASE("a truncated RDB is an error at every length, never a crash") {
  for (const std::string file : {"redis-7.0-lru.rdb", "valkey-9.1-lru.rdb", "redis-8.0.rdb", "valkey-9.1.rdb",
                                 "redis-6.0.rdb", "redis-8.0-cluster.rdb"}) {
    INFO(file);
    const auto bytes = read_file(file);
    for (std::size_t n = 0; n < bytes.size(); ++n) {
      const auto p = parse(std::string_view(bytes).substr(0, n));
      REQUIRE_MESSAGE(p.result == Result::kError, "prefix of " << n << " bytes");
      REQUIRE_MESSAGE(p.error.find("the input ended") != std::string::npos, p.error);
    }
  }
  const auto bytes = read_file("redis-7.0-lru.rdb");
  const auto p = parse(std::string_view(bytes).substr(0, bytes.size() - 3));
  CHECK(p.error.find("byte offset " + std::to_string(bytes.size() - 3)) != std::string::npos);
  CHECK(p.error.find("checksum") != std::string::npos);
}

TEST_CASE("a corrupted RDB is an error: every single-byte change is caught") {
  for (const std::string file : {"redis-7.0-lru.rdb", "valkey-9.1-lru.rdb", "redis-8.0-lru.rdb",
                                 "redis-8.0-cluster.rdb", "valkey-9.1-cluster.rdb", "redis-6.0-lru.rdb"}) {
    INFO(file);
    const auto bytes = read_file(file);
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      for (unsigned char x : {0x01, 0x80, 0xff}) {
        std::string bad = bytes;
        bad[i] = static_cast<char>(bad[i] ^ x);
        const auto p = parse(bad);
        REQUIRE_MESSAGE(p.result == Result::kError, "byte " << i << " ^ " << int{x});
        CHECK_FALSE(p.error.empty());
      }
    }
  }
  SUBCASE("checksum 0 means the server did not compute one") {
    auto bytes = read_file("redis-7.0.rdb");
    bytes.replace(bytes.size() - 8, 8, std::string(8, '\0'));
    CHECK(parse(bytes).result == Result::kEnd);
    bytes[bytes.size() - 9 - 20] ^= 0x20;  // a change inside the last value is then not noticed...
    const auto p = parse(bytes);
    CHECK((p.result == Result::kEnd || p.result == Result::kError));  // ...unless it breaks the structure
  }
  SUBCASE("the message names the checksum") {
    auto bytes = read_file("redis-7.0.rdb");
    bytes[bytes.size() - 1] ^= 1;
    const auto p = parse(bytes);
    CHECK(p.result == Result::kError);
    CHECK(p.error.find("checksum mismatch") != std::string::npos);
    CHECK(p.error.find("byte offset " + std::to_string(bytes.size() - 8)) != std::string::npos);
  }
}

TEST_CASE("headers") {
  CHECK(parse("REDIS0013").error.find("RDB version 13") != std::string::npos);
  CHECK(parse("REDIS0004").error.find("RDB version 4") != std::string::npos);  // no checksum before RDB 5
  CHECK(parse("VALKEY079").error.find("RDB version 79") != std::string::npos);
  CHECK(parse("VALKEY080\xff").error.find("the input ended") != std::string::npos);
  CHECK(parse("redis0010").error.find("not an RDB file") != std::string::npos);
  CHECK(parse("+FULLRESYNC").error.find("not an RDB file") != std::string::npos);
  CHECK(parse("REDIS").error.find("the input ended") != std::string::npos);
  const auto empty = parse(framed("REDIS0010", ""));
  CHECK(empty.result == Result::kEnd);
  CHECK(empty.entries.empty());
  // Type 22 means different things to Redis 7.4+ and Valkey 9, and nothing to an RDB 11 reader.
  const std::string hash22 = bytes_of({22}) + rdb_str("k") + bytes_of({0});
  CHECK(parse(framed("REDIS0011", hash22)).error.find("neither an opcode nor a value type") !=
        std::string::npos);
  // 243 is Valkey's slot import; a Redis 7.0 file cannot have it.
  const std::string slot_import = bytes_of({0xf3}) + rdb_str(std::string(40, 'j')) + bytes_of({1, 0, 10});
  CHECK(parse(framed("REDIS0010", slot_import)).error.find("neither an opcode") != std::string::npos);
  CHECK(parse(framed("VALKEY080", slot_import)).result == Result::kEnd);
}

TEST_CASE("limits refuse lengths before anything is allocated") {
  const auto bytes = read_file("redis-7.0.rdb");
  SUBCASE("a kept value") {
    Limits l;
    l.max_value_bytes = 1000;
    const auto p = parse(bytes, SIZE_MAX, l);
    CHECK(p.result == Result::kError);
    CHECK(p.error.find("above the limit of 1000") != std::string::npos);
    // Not kept, the same value only has to be walked: strings above the limit are still refused, though.
    const auto q = parse(bytes, SIZE_MAX, l, [](int, std::string_view k) { return k != "str:big"; });
    CHECK(q.result == Result::kError);
  }
  SUBCASE("elements") {
    Limits l;
    l.max_elements = 10;
    const auto p = parse(bytes, SIZE_MAX, l);
    CHECK(p.result == Result::kError);
    CHECK(p.error.find("elements, above the limit of 10") != std::string::npos);
  }
  SUBCASE("keys") {
    Limits l;
    l.max_key_bytes = 50;
    const auto p = parse(bytes, SIZE_MAX, l);
    CHECK(p.result == Result::kError);
    CHECK(p.error.find("above the limit of 50") != std::string::npos);
    CHECK(p.error.find("reading a key") != std::string::npos);
  }
  SUBCASE("lengths no server writes") {
    // A key of 2^62 bytes (64-bit length), a value string of 2^62 bytes, a list of 2^40 elements, an LZF
    // string that claims to expand a hundred thousand times: all refused at once.
    const std::string huge = bytes_of({0x81, 0x40, 0, 0, 0, 0, 0, 0, 0});
    const auto key = parse(framed("REDIS0010", bytes_of({kString}) + huge));
    CHECK(key.error.find("a string of 4611686018427387904 bytes, above the limit") != std::string::npos);
    CHECK(key.error.find("reading a key") != std::string::npos);
    const auto value = parse(framed("REDIS0010", bytes_of({kString}) + rdb_str("k") + huge));
    CHECK(value.error.find("above the limit") != std::string::npos);
    CHECK(value.error.find("reading the value of key 'k'") != std::string::npos);
    const std::string count = bytes_of({0x81, 0, 0, 1, 0, 0, 0, 0, 0});
    CHECK(parse(framed("REDIS0010", bytes_of({kListQuicklist2}) + rdb_str("k") + count))
              .error.find("elements, above the limit") != std::string::npos);
    // LZF key: compressed length 1, plain length 100000.
    const std::string lzf_key = bytes_of({kString, 0xc3, 0x01, 0x80, 0x00, 0x01, 0x86, 0xa0, 'x'});
    CHECK(parse(framed("REDIS0010", lzf_key)).error.find("cannot be right") != std::string::npos);
  }
}

TEST_CASE("what no server here writes: seconds expiry, module values and module aux data (hand-made)") {
  // No module is installed on these machines, so type 7 and opcode 247 are built by hand from the format
  // (rdb.c rdbLoadCheckModuleValue / RDB_OPCODE_MODULE_AUX): module id, then (opcode, datum) pairs ended by
  // 0.
  std::string module_value = bytes_of({0x81, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0x01});  // 64-bit id
  module_value += bytes_of({0x01, 0x05});                                                       // SINT 5
  module_value += bytes_of({0x02, 0x40, 0x10});              // UINT 16 (14-bit length)
  module_value += bytes_of({0x03, 0x00, 0x00, 0x80, 0x3f});  // FLOAT 1.0
  module_value += bytes_of({0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0, 0x3f});  // DOUBLE 1.0
  module_value += bytes_of({0x05}) + rdb_str("abc");                                 // STRING "abc"
  module_value += bytes_of({0x05, 0xc0, 0x07});                                      // STRING, int-encoded 7
  module_value += bytes_of({0x00});                                                  // EOF
  std::string body;
  body += bytes_of({0xfd, 0x10, 0x32, 0x54, 0x76});  // EXPIRETIME 0x76543210 s
  body += bytes_of({kString}) + rdb_str("old") + rdb_str("val");
  body += bytes_of({0xf7, 0x05, 0x02, 0x01});  // MODULE_AUX: module id 5, "when" (a UINT) 1, then its data
  body += bytes_of({0x05}) + rdb_str("hi") + bytes_of({0x00});
  body += bytes_of({kModule2}) + rdb_str("mod") + module_value;
  const auto p = parse(framed("REDIS0010", body));
  REQUIRE_MESSAGE(p.result == Result::kEnd, p.error);
  REQUIRE(p.entries.size() == 2);
  CHECK(p.entries[0].expire_ms == std::int64_t{0x76543210} * 1000);
  CHECK(p.entries[0].key == "old");
  CHECK(p.entries[0].value == rdb_str("val"));
  CHECK(p.entries[1].key == "mod");
  CHECK(p.entries[1].expire_ms == -1);
  CHECK(p.entries[1].type == kModule2);
  CHECK(p.entries[1].value == module_value);
  CHECK(type_name(kModule2, p.header) == "module");
  Rebuilt r = rebuild(p.entries[1], p.header);
  CHECK_FALSE(r.ok);
  CHECK(r.error.find("module") != std::string::npos);
  // An unknown module opcode is an error, not a guess.
  std::string bad = body;
  bad[bad.size() - 4] = '\x09';  // the STRING opcode of the last datum
  CHECK(parse(framed("REDIS0010", bad)).error.find("unknown module opcode") != std::string::npos);
}

TEST_CASE("unread(): what the reader pulled beyond the end of the RDB") {
  const auto bytes = read_file("redis-7.0-lru.rdb");
  const std::string mark(40, 'm');
  const std::string after = mark + "*1\r\n$4\r\nPING\r\n";
  const auto whole = parse(bytes + after);
  REQUIRE(whole.result == Result::kEnd);
  CHECK(whole.unread == after);
  // With short reads the reader has read less ahead; what it did read is still handed back.
  const std::string input = bytes + after;
  MemorySource src(input, 100);
  Reader reader(src);
  REQUIRE(reader.read_header());
  Entry e;
  while (reader.next(e, [](int, std::string_view) { return false; }) == Result::kEntry) {
  }
  REQUIRE(reader.error().empty());
  CHECK(reader.bytes_read() == bytes.size());
  std::string rest(reader.unread());
  char c;
  while (src.read(&c, 1) == 1)
    rest.push_back(c);
  CHECK(rest == after);
}

TEST_CASE("rebuild_commands: values as commands") {
  const auto p60 = parse(read_file("redis-6.0.rdb"));
  const auto p70 = parse(read_file("redis-7.0.rdb"));
  const auto p80 = parse(read_file("redis-8.0.rdb"));
  const auto p91 = parse(read_file("valkey-9.1.rdb"));
  REQUIRE(p60.result == Result::kEnd);
  REQUIRE(p70.result == Result::kEnd);
  REQUIRE(p80.result == Result::kEnd);
  REQUIRE(p91.result == Result::kEnd);
  auto entry = [](const Parsed& p, const std::string& key) -> const Entry& {
    const Entry* e = find(p, 0, key);
    REQUIRE_MESSAGE(e != nullptr, key);
    return *e;
  };

  SUBCASE("strings: SET, then APPEND in chunks") {
    const auto r = rebuild(entry(p70, "str:lzf"), p70.header, 100);
    REQUIRE_MESSAGE(r.ok, r.error);
    REQUIRE(r.commands.size() == 13);
    CHECK(r.commands[0][0] == "SET");
    std::string joined;
    for (const auto& c : r.commands) {
      CHECK(c.size() == 3);
      CHECK(c[1] == "str:lzf");
      CHECK(c[2].size() <= 100);
      if (&c != &r.commands[0]) CHECK(c[0] == "APPEND");
      joined += c[2];
    }
    std::string expected;
    for (int i = 0; i < 150; ++i)
      expected += "abcdefgh";
    CHECK(joined == expected + "tail");
    const auto i = rebuild(entry(p70, "str:int16"), p70.header);
    CHECK(i.commands == std::vector<std::vector<std::string>>{{"SET", "str:int16", "12345"}});
    const auto empty = rebuild(entry(p70, "str:empty"), p70.header);
    CHECK(empty.commands == std::vector<std::vector<std::string>>{{"SET", "str:empty", ""}});
  }

  SUBCASE("lists: listpack, quicklist with compressed nodes, plain nodes; quicklist of ziplists (6.0)") {
    for (const Parsed* p : {&p60, &p70, &p80, &p91}) {
      const auto small = rebuild(entry(*p, "list:small"), p->header);
      REQUIRE_MESSAGE(small.ok, small.error);
      CHECK(args_of(small, "RPUSH") ==
            std::vector<std::string>{"a", "b", "1", "2", "-100", "1234567890123", std::string(70, 'x')});
      const auto big = rebuild(entry(*p, "list:big"), p->header, 500);
      REQUIRE_MESSAGE(big.ok, big.error);
      const auto elements = args_of(big, "RPUSH");
      REQUIRE(elements.size() == 40);
      for (int i = 0; i < 40; ++i) {
        char prefix[16];
        std::snprintf(prefix, sizeof prefix, "element-%03d-", i);
        CHECK(elements[static_cast<std::size_t>(i)] == prefix + std::string(40, 'y'));
      }
      CHECK(big.commands.size() > 1);
      if (p == &p60) continue;  // no plain nodes before 7.0
      const auto plain = rebuild(entry(*p, "list:plain"), p->header);
      REQUIRE_MESSAGE(plain.ok, plain.error);
      CHECK(args_of(plain, "RPUSH") ==
            std::vector<std::string>{"before", std::string(300, 'P'), "after", std::string(150, 'Q')});
    }
  }

  SUBCASE("sets: intset, listpack, hashtable") {
    for (const Parsed* p : {&p60, &p70, &p91}) {
      auto members = [&](const std::string& key) {
        const auto r = rebuild(entry(*p, key), p->header);
        REQUIRE_MESSAGE(r.ok, r.error);
        const auto a = args_of(r, "SADD");
        return std::set<std::string>(a.begin(), a.end());
      };
      CHECK(members("set:intset") == std::set<std::string>{"1", "2", "3", "-5", "70000", "5000000000"});
      CHECK(members("set:listpack") == std::set<std::string>{"apple", "banana", "cherry", "42"});
      CHECK(members("set:hashtable").size() == 30);
      CHECK(members("set:hashtable").count("member-29") == 1);
      CHECK(members("set:big-intset").size() == 20);
    }
  }

  SUBCASE("sorted sets: scores come back as the same doubles (ziplist, listpack, skiplist)") {
    for (const Parsed* p : {&p60, &p70, &p80, &p91}) {
      auto scores = [&](const std::string& key) {
        const auto r = rebuild(entry(*p, key), p->header, 64);
        REQUIRE_MESSAGE(r.ok, r.error);
        const auto a = args_of(r, "ZADD");
        REQUIRE(a.size() % 2 == 0);
        std::map<std::string, double> out;
        for (std::size_t i = 0; i < a.size(); i += 2)
          out[a[i + 1]] = std::strtod(a[i].c_str(), nullptr);
        return out;
      };
      const auto small = scores("zset:small");
      CHECK(small == std::map<std::string, double>{
                         {"one", 1}, {"half", 0.5}, {"neg", -2.25}, {"big", 1e300}, {"third", 1.0 / 3}});
      const auto big = scores("zset:skiplist");
      CHECK(big.size() == 26);
      CHECK(big.at("pinf") == HUGE_VAL);
      CHECK(big.at("ninf") == -HUGE_VAL);
      CHECK(big.at("tiny") == 5e-324);
      CHECK(big.at("pi") == 3.141592653589793);
      CHECK(big.at("0.1") == 0.1);
      CHECK(big.at("int") == 12345678901234.0);
      CHECK(big.at("m13") == 13 * 1.5 - 7);
    }
  }

  SUBCASE("hashes: ziplist, listpack and hashtable") {
    for (const Parsed* p : {&p60, &p70, &p80, &p91}) {
      auto fields = [&](const std::string& key) {
        const auto r = rebuild(entry(*p, key), p->header, 64);
        REQUIRE_MESSAGE(r.ok, r.error);
        CHECK(args_of(r, "HPEXPIREAT").empty());
        const auto a = args_of(r, "HSET");
        REQUIRE(a.size() % 2 == 0);
        std::map<std::string, std::string> out;
        for (std::size_t i = 0; i < a.size(); i += 2)
          out[a[i]] = a[i + 1];
        return out;
      };
      CHECK(fields("hash:small") == std::map<std::string, std::string>{
                                        {"name", "slot"}, {"count", "12"}, {"neg", "-3"}, {"empty", ""}});
      const auto big = fields("hash:big");
      CHECK(big.size() == 24);
      CHECK(big.at("field-17") == "value-17");
      CHECK(fields("hash:longvalue") == std::map<std::string, std::string>{
                                            {"short", "x"}, {"long", std::string(100, 'L')}, {"7", "seven"}});
    }
  }

  SUBCASE("hashes with field TTLs: HSET, then HPEXPIREAT grouped by time") {
    const std::int64_t t = 4102444800000;
    for (const Parsed* p : {&p80, &p91}) {
      INFO((p == &p80 ? "redis-8.0" : "valkey-9.1"));
      const auto small = rebuild(entry(*p, "hash:ttl-small"), p->header);
      REQUIRE_MESSAGE(small.ok, small.error);
      const auto hset = args_of(small, "HSET");
      CHECK(std::set<std::string>(hset.begin(), hset.end()) ==
            std::set<std::string>{"a", "1", "b", "2", "c", "3"});
      REQUIRE(small.commands.back()[0] == "HPEXPIREAT");
      auto c = small.commands.back();
      std::sort(c.begin() + 5, c.end());
      CHECK(c == std::vector<std::string>{"HPEXPIREAT", "hash:ttl-small", std::to_string(t + 1000), "FIELDS",
                                          "2", "a", "c"});
      const auto big = rebuild(entry(*p, "hash:ttl-big"), p->header);
      REQUIRE_MESSAGE(big.ok, big.error);
      CHECK(args_of(big, "HSET").size() == 40);
      std::vector<std::vector<std::string>> ttl;
      for (auto cmd : big.commands) {
        if (cmd[0] != "HPEXPIREAT") continue;
        std::sort(cmd.begin() + 5, cmd.end());
        ttl.push_back(cmd);
      }
      CHECK(ttl ==
            std::vector<std::vector<std::string>>{
                {"HPEXPIREAT", "hash:ttl-big", std::to_string(t + 2000), "FIELDS", "3", "f00", "f01", "f02"},
                {"HPEXPIREAT", "hash:ttl-big", std::to_string(t + 3000), "FIELDS", "1", "f10"}});
    }
  }

  SUBCASE("chunks carry about chunk_bytes of element data") {
    const auto r = rebuild(entry(p70, "set:hashtable"), p70.header, 100);
    REQUIRE(r.ok);
    CHECK(r.commands.size() > 3);
    for (const auto& c : r.commands) {
      std::size_t bytes = 0;
      for (std::size_t i = 2; i < c.size(); ++i)
        bytes += c[i].size() + 8;
      CHECK(bytes < 100 + 9 + 8);  // at most one element past the budget
    }
  }

  SUBCASE("streams and malformed values are refused") {
    const auto s = rebuild(entry(p70, "stream:s"), p70.header);
    CHECK_FALSE(s.ok);
    CHECK(s.error.find("stream") != std::string::npos);
    for (const auto* p : {&p60, &p70, &p80, &p91}) {
      for (const auto& e : p->entries) {
        if (e.type == kStreamListpacks || e.type == kStreamListpacks2 || e.type == kStreamListpacks3)
          continue;
        INFO("key " << e.key);
        REQUIRE(rebuild(e, p->header).ok);
        for (std::size_t n = 0; n < e.value.size(); ++n) {
          Entry cut = e;
          cut.value.resize(n);
          REQUIRE_MESSAGE(!rebuild(cut, p->header).ok, "prefix of " << n << " bytes");
        }
        Entry longer = e;
        longer.value += "x";
        CHECK(rebuild(longer, p->header).error.find("left over") != std::string::npos);
      }
    }
  }
}

TEST_CASE("rebuild_commands: zipmap hashes (Redis before 2.6; hand-made from zipmap.c's own example)") {
  // "foo" => "bar", "hello" => "world": count byte, then per pair key length, key, value length, free byte,
  // value; 255 ends it. The example in zipmap.c, plus a value with two free bytes after it.
  const std::string zm = bytes_of({2, 3}) + "foo" + bytes_of({3, 0}) + "bar" + bytes_of({5}) + "hello" +
                         bytes_of({5, 2}) + "world" + bytes_of({'x', 'x', 255});
  Entry e;
  e.key = "h";
  e.type = kHashZipmap;
  e.value = static_cast<char>(zm.size()) + zm;
  const auto r = rebuild(e, Header{Flavor::kRedis, 5});
  REQUIRE_MESSAGE(r.ok, r.error);
  CHECK(r.commands == std::vector<std::vector<std::string>>{{"HSET", "h", "foo", "bar", "hello", "world"}});
  e.value = static_cast<char>(zm.size() - 1) + zm.substr(0, zm.size() - 1);  // no terminator
  CHECK_FALSE(rebuild(e, Header{Flavor::kRedis, 5}).ok);
}

TEST_CASE("dump_payload: a payload the server would have produced") {
  // Redis 7.0.15's own DUMP of str:short, from the manifest.
  const auto m = read_manifest("redis-7.0.manifest");
  for (const auto& k : m.keys) {
    if (k.key == "str:short") CHECK(dump_payload(kString, "\x05hello", 10) == *k.dump);
  }
  const auto d = dump_payload(kString, "\x05hello", 80);
  CHECK(d.size() == 1 + 6 + 2 + 8);
  CHECK(d.substr(7, 2) == std::string("\x50\x00", 2));
  std::uint64_t crc = 0;
  for (int i = 7; i >= 0; --i)
    crc = (crc << 8) | static_cast<unsigned char>(d[9 + static_cast<std::size_t>(i)]);
  CHECK(crc == crc64(0, d.substr(0, 9)));
}
