// The RDB format, read as a stream: the keys of a snapshot one by one, each value cut out verbatim (its bytes
// exactly as they are in the RDB), and the DUMP payload that RESTORE accepts built around those bytes. Values
// are never decoded to be copied; only keys too big for one RESTORE are decoded (rebuild_commands), so that
// they can be sent as chunks of ordinary commands.
//
// Formats: Redis RDB 10 (7.0), 11 (7.2) and 12 (7.4, 8.x), and Valkey's "VALKEY080" header (Valkey 9). Valkey
// also sends "REDIS0011" to a diskless replica that did not announce its version; both are read. Older Redis
// versions back to REDIS0005 (the first with a checksum) and their encodings (zipmap, ziplist, quicklist of
// ziplists) are read too.
//
// Where the format facts come from (read, not copied): Redis src/rdb.h and src/rdb.c at 7.0.15, 7.2.6, 7.4.1
// and the 8.0 branch (types 0-25, opcodes 244-255, length and string encodings, LZF, text and binary doubles,
// streams v1-v3, module values and module aux data as opcode streams, hash field TTLs of types
// 22-25), 7.4.1's t_hash.c (a listpack field TTL of 0 means none), listpack.c, ziplist.c, intset.c, zipmap.c
// and quicklist.h (the blobs rebuild_commands decodes); Valkey's src/rdb.h, src/rdb.c and
// src/cluster_migrateslots.c from its unstable branch after 9.0 (VALKEY magic, RDB 80 and 81, type 22 = hash
// with per-field 8-byte expiry times, type 23 = path hash, opcode 243 = slot import, opcode 244 read as a
// foreign hint). Every fixture in tests/data/rdb/ was written by a real server: Redis 6.0.16, 7.0.15
// and 8.0.2, Valkey 8.0.1, 8.1.1 and 9.1.2.
//
// Cost: one pass over the bytes through a 256 KB buffer, CRC-64 over every byte (slice-by-16); a value that
// is not wanted is walked without being copied or allocated. About 1 GB/s and 10 million keys/s on one core
// (tests/bench/rdb_bench.cc).
//
// No sockets here: the reader pulls bytes from a ByteSource, which the replica link implements over its
// connection and the tests over a file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace slotshift::rdb {

// Bytes in, in order. read() blocks until at least one byte is there.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Copies between 1 and n bytes into dst and returns how many; 0 when the input ended or failed (the
  // source keeps its own error message for the caller).
  virtual std::size_t read(char* dst, std::size_t n) = 0;
};

// A ByteSource over bytes in memory (tests, fuzzers, a DUMP payload). `max_read` caps what one read()
// returns, to exercise callers with short reads.
class MemorySource : public ByteSource {
 public:
  explicit MemorySource(std::string_view bytes, std::size_t max_read = SIZE_MAX)
      : bytes_(bytes), max_read_(max_read == 0 ? 1 : max_read) {}
  std::size_t read(char* dst, std::size_t n) override;

 private:
  std::string_view bytes_;
  std::size_t max_read_;
};

enum class Flavor : std::uint8_t { kRedis, kValkey };

struct Header {
  Flavor flavor = Flavor::kRedis;
  int version = 0;  // REDIS0010 -> 10, VALKEY080 -> 80
};

// The RDB version a server writes into its DUMP payloads (and refuses above): Redis 7.0 = 10, 7.2 = 11,
// 7.4/8.x = 12, Valkey 7.2/8.x = 11, Valkey 9 = 80. A Valkey 9 master sends a REDIS0011 file to a replica
// that did not send `REPLCONF version`, and fails that sync outright when a hash has field TTLs ("Can't store
// key ... in RDB version 11"), so a replica link to Valkey 9 must announce its version to get VALKEY080.
// The reader uses the header's flavor and version to pick the type table: Redis 7.4+ and Valkey 9 give type
// codes 22 and up different meanings.

// Value types, as the type byte of an RDB entry or a DUMP payload.
enum Type : std::uint8_t {
  kString = 0,
  kList = 1,          // linked list (RDB < 7)
  kSet = 2,           // hashtable
  kZset = 3,          // skiplist, text doubles (RDB < 8)
  kHash = 4,          // hashtable
  kZset2 = 5,         // skiplist, binary doubles
  kModulePreGa = 6,   // 4.0 release candidates; refused (Redis refuses it too)
  kModule2 = 7,       // module value: module id, then a self-describing opcode stream
  kHashZipmap = 9,    // RDB < 4
  kListZiplist = 10,  // RDB < 7
  kSetIntset = 11,
  kZsetZiplist = 12,    // RDB < 10
  kHashZiplist = 13,    // RDB < 10
  kListQuicklist = 14,  // quicklist of ziplists (RDB 7-9)
  kStreamListpacks = 15,
  kHashListpack = 16,
  kZsetListpack = 17,
  kListQuicklist2 = 18,  // quicklist of listpacks and plain nodes (RDB 10+)
  kStreamListpacks2 = 19,
  kSetListpack = 20,  // RDB 11+
  kStreamListpacks3 = 21,
  // Redis RDB 12 (7.4+): hashes with field TTLs.
  kRedisHashMetadataPreGa = 22,
  kRedisHashListpackExPreGa = 23,
  kRedisHashMetadata = 24,
  kRedisHashListpackEx = 25,
  // Valkey RDB 80 (9.0+): the same codes mean something else.
  kValkeyHash2 = 22,     // hashtable hash with a per-field expiry
  kValkeyPathHash = 23,  // RDB 81 (9.2); not readable here
};

// A short name for a type code under a header ("string", "list (quicklist)", "hash (field TTLs)", ...);
// "unknown" for codes that are not a type in that format.
std::string_view type_name(std::uint8_t type, const Header& header);

struct Limits {
  std::size_t max_key_bytes = 512ull * 1024 * 1024;
  std::size_t max_value_bytes = 4ull * 1024 * 1024 * 1024;  // one kept value; also any one string, aux field
                                                            // or function library
  std::size_t max_elements = 1ull << 32;                    // length prefixes of aggregates
};

// One key of the snapshot.
struct Entry {
  int db = 0;
  std::string key;
  std::uint8_t type = 0;  // the RDB type byte, as in the file
  // The value's bytes exactly as in the RDB, without the type byte; filled only when the key was wanted.
  std::string value;
  bool kept = false;            // whether `value` was filled (the want callback said yes)
  std::size_t value_size = 0;   // bytes of the value in the RDB, whether kept or not
  std::int64_t expire_ms = -1;  // absolute unix time in ms, -1 for none (EXPIRETIME is converted); may
                                // already be in the past: expired keys are in snapshots
  std::optional<std::uint64_t> idle_s;  // LRU idle time (opcode 248), seconds
  std::optional<std::uint8_t> freq;     // LFU counter (opcode 249)
};

enum class Result : std::uint8_t { kEntry, kEnd, kError };

class Reader {
 public:
  static constexpr std::size_t kBufferSize = 256 * 1024;

  explicit Reader(ByteSource& source, Limits limits = {});
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // Reads the 9-byte header. False (see error()) for anything but "REDIS00vv" (versions 5-12: every RDB with
  // a checksum) or "VALKEYvvv" (versions 80-81).
  bool read_header();
  const Header& header() const { return header_; }

  // Reads up to and including the next key. `want` is called with the key (and db) before the value is read:
  // true keeps the value's bytes in out.value, false only walks over them (an empty `want` keeps every
  // value). When it is called, out.key, out.db, out.type, out.expire_ms, out.idle_s and out.freq are already
  // set, so a callback that holds `out` can also decline keys that have expired. Aux fields, SELECTDB,
  // RESIZEDB, functions, module aux, slot info and slot imports are consumed on the way (aux fields are
  // collected in aux(), function libraries in functions()). kEnd after the EOF opcode and its checksum, which
  // is verified unless it is 0 (rdbchecksum no). After kEnd or kError, next() returns the same again. `out`
  // is reused: its strings keep their capacity from one key to the next.
  Result next(Entry& out, const std::function<bool(int db, std::string_view key)>& want);

  const std::map<std::string, std::string>& aux() const { return aux_; }
  // The code of every function library (opcode 245), in file order, as FUNCTION LOAD takes it.
  const std::vector<std::string>& functions() const { return functions_; }
  // Bytes of the RDB consumed so far (the header included).
  std::uint64_t bytes_read() const { return base_ + pos_; }
  // After kEnd: bytes the reader pulled from the source beyond the end of the RDB (it reads ahead into its
  // buffer). On a replica link they belong to what follows the RDB: the 40-byte mark of the diskless
  // "$EOF:<mark>" framing, and possibly the first bytes of the command stream. Empty before kEnd.
  std::string_view unread() const;
  // After kError: what was wrong and at which byte offset.
  const std::string& error() const { return error_; }

 private:
  // Input: buf_[pos_, end_) are read but not consumed; base_ is the stream offset of buf_[0].
  bool fill(std::size_t need);
  void compact();
  bool skip(std::uint64_t n);
  bool read_raw(void* dst, std::size_t n);
  bool read_u8(std::uint8_t& v);
  bool read_len(std::uint64_t& len, bool& encoded);
  bool read_plain_len(std::uint64_t& len);
  bool read_count(std::uint64_t& n);  // a plain length that counts elements: checked against max_elements
  bool read_string(std::string& out, std::size_t limit);
  bool skip_string();
  bool skip_text_double();
  bool skip_module_opcodes();
  bool skip_stream(std::uint8_t type);
  bool skip_value(std::uint8_t type);
  bool known_type(std::uint8_t type) const;
  bool fail(std::string_view what);

  ByteSource& source_;
  Limits limits_;
  Header header_;
  std::unique_ptr<char[]> buf_;
  std::size_t pos_ = 0;
  std::size_t end_ = 0;
  std::uint64_t base_ = 0;
  bool source_ended_ = false;
  // CRC-64 of every byte consumed before buf_[crc_from_].
  std::uint64_t crc_ = 0;
  std::size_t crc_from_ = 0;
  // While a wanted value is read: the bytes from buf_[capture_from_] on belong to *capture_.
  std::string* capture_ = nullptr;
  std::size_t capture_from_ = 0;
  // Context for error messages.
  const char* context_ = "the header";
  std::string_view context_key_;
  int db_ = 0;
  bool done_ = false;
  bool failed_ = false;
  std::string scratch_;  // compressed bytes of an LZF string being decoded
  std::map<std::string, std::string> aux_;
  std::vector<std::string> functions_;
  std::string error_;
};

// The DUMP payload of a value: type byte + value bytes + RDB version (2 bytes, little-endian) + CRC64 of all
// of that (8 bytes, little-endian).
std::string dump_payload(std::uint8_t type, std::string_view value, std::uint16_t rdb_version);

// Commands that rebuild a value from scratch on a server where the key does not exist, each carrying at most
// about `chunk_bytes` of element data (every element counts 8 bytes more than its length, so that tiny
// elements do not make commands with millions of arguments), in the order they must run: SET then APPEND for
// strings, RPUSH, SADD, ZADD, HSET, and HPEXPIREAT (grouped by time) for hash fields with their own TTLs. The
// key's own expiry is not included. Scores are printed so that they parse back to the same double (inf and
// -inf included). False (and `error`) for types that cannot be rebuilt this way (streams, modules) or a
// malformed value; commands already emitted must then be undone by the caller (DEL).
bool rebuild_commands(std::string_view key, std::uint8_t type, std::string_view value, const Header& header,
                      std::size_t chunk_bytes,
                      const std::function<void(std::vector<std::string>&& command)>& emit,
                      std::string& error);

}  // namespace slotshift::rdb
