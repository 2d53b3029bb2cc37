#include "common/rdb.h"

#include <lzf.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>

#include "common/crc64.h"

namespace slotshift::rdb {
namespace {

// Opcodes: special type bytes, from 255 down.
constexpr std::uint8_t kOpEof = 255;
constexpr std::uint8_t kOpSelectDb = 254;
constexpr std::uint8_t kOpExpireTime = 253;    // seconds, 4 bytes
constexpr std::uint8_t kOpExpireTimeMs = 252;  // ms, 8 bytes
constexpr std::uint8_t kOpResizeDb = 251;
constexpr std::uint8_t kOpAux = 250;
constexpr std::uint8_t kOpFreq = 249;
constexpr std::uint8_t kOpIdle = 248;
constexpr std::uint8_t kOpModuleAux = 247;
constexpr std::uint8_t kOpFunctionPreGa = 246;  // Redis 7.0 release candidates only
constexpr std::uint8_t kOpFunction2 = 245;
constexpr std::uint8_t kOpSlotInfo = 244;    // Redis 7.4+; Valkey reads it as a foreign hint
constexpr std::uint8_t kOpSlotImport = 243;  // Valkey 9.0+

// A length's first byte: the top two bits say how the length goes on.
constexpr unsigned kLen6 = 0;
constexpr unsigned kLen14 = 1;
constexpr unsigned kLenEncoded = 3;  // a special string encoding follows, named by the low six bits
constexpr std::uint8_t kLen32 = 0x80;
constexpr std::uint8_t kLen64 = 0x81;
constexpr unsigned kEncInt8 = 0;
constexpr unsigned kEncInt16 = 1;
constexpr unsigned kEncInt32 = 2;
constexpr unsigned kEncLzf = 3;

// Module values are a stream of (opcode, datum) pairs ended by opcode 0.
constexpr std::uint64_t kModuleEof = 0;
constexpr std::uint64_t kModuleSint = 1;
constexpr std::uint64_t kModuleUint = 2;
constexpr std::uint64_t kModuleFloat = 3;
constexpr std::uint64_t kModuleDouble = 4;
constexpr std::uint64_t kModuleString = 5;

constexpr std::uint64_t kQuicklistPlain = 1;
constexpr std::uint64_t kQuicklistPacked = 2;

// LZF expands at most about 88 times (a 3-byte back reference copies up to 264 bytes). A declared
// uncompressed length beyond this bound cannot be right, so it is refused before anything is allocated.
constexpr std::uint64_t kLzfMaxRatio = 100;

std::uint64_t load_le(const unsigned char* p, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i)
    v = (v << 8) | p[i];
  return v;
}

void store_le(std::string& out, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i)
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 64)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (s.size() > 64) out += "...";
  return out;
}

void append_int(std::string& out, std::int64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

bool redis_types(const Header& h) {
  return h.flavor == Flavor::kRedis;
}

}  // namespace

std::size_t MemorySource::read(char* dst, std::size_t n) {
  const std::size_t take = std::min({n, max_read_, bytes_.size()});
  if (take == 0) return 0;
  std::memcpy(dst, bytes_.data(), take);
  bytes_.remove_prefix(take);
  return take;
}

std::string_view type_name(std::uint8_t type, const Header& header) {
  static constexpr std::string_view kNames[] = {"string",
                                                "list (linked list)",
                                                "set (hashtable)",
                                                "zset (skiplist, text scores)",
                                                "hash (hashtable)",
                                                "zset (skiplist)",
                                                "module (pre-GA)",
                                                "module",
                                                "unknown",
                                                "hash (zipmap)",
                                                "list (ziplist)",
                                                "set (intset)",
                                                "zset (ziplist)",
                                                "hash (ziplist)",
                                                "list (quicklist of ziplists)",
                                                "stream",
                                                "hash (listpack)",
                                                "zset (listpack)",
                                                "list (quicklist)",
                                                "stream (v2)",
                                                "set (listpack)",
                                                "stream (v3)"};
  if (type < std::size(kNames)) return kNames[type];
  if (redis_types(header) && header.version >= 12) {
    switch (type) {
      case kRedisHashMetadataPreGa:
        return "hash (field TTLs, 7.4 RC)";
      case kRedisHashListpackExPreGa:
        return "hash (listpack with field TTLs, 7.4 RC)";
      case kRedisHashMetadata:
        return "hash (field TTLs)";
      case kRedisHashListpackEx:
        return "hash (listpack with field TTLs)";
      default:
        break;
    }
  }
  if (header.flavor == Flavor::kValkey) {
    if (type == kValkeyHash2) return "hash (field TTLs)";
    if (type == kValkeyPathHash) return "path hash";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------------------
// Reader: the input buffer

Reader::Reader(ByteSource& source, Limits limits)
    : source_(source), limits_(limits), buf_(new char[kBufferSize]) {}

Reader::~Reader() = default;

std::string_view Reader::unread() const {
  return done_ ? std::string_view(buf_.get() + pos_, end_ - pos_) : std::string_view();
}

bool Reader::fail(std::string_view what) {
  if (failed_) return false;
  failed_ = true;
  error_ = "RDB: ";
  error_ += what;
  error_ += " at byte offset ";
  append_int(error_, static_cast<std::int64_t>(bytes_read()));
  error_ += " (reading ";
  error_ += context_;
  if (!context_key_.empty()) {
    error_ += " of key '";
    error_ += printable(context_key_);
    error_ += "'";
  }
  error_ += ")";
  return false;
}

// Folds the consumed bytes into the CRC and the capture, then moves the unconsumed ones to the front.
void Reader::compact() {
  crc_ = crc64(crc_, buf_.get() + crc_from_, pos_ - crc_from_);
  if (capture_) capture_->append(buf_.get() + capture_from_, pos_ - capture_from_);
  const std::size_t keep = end_ - pos_;
  if (keep && pos_) std::memmove(buf_.get(), buf_.get() + pos_, keep);
  base_ += pos_;
  end_ = keep;
  pos_ = 0;
  crc_from_ = 0;
  capture_from_ = 0;
}

// Makes at least `need` (<= kBufferSize) unconsumed bytes available.
bool Reader::fill(std::size_t need) {
  if (end_ - pos_ >= need) return true;
  compact();
  if (capture_ && capture_->size() > limits_.max_value_bytes)
    return fail("a kept value longer than the limit of " + std::to_string(limits_.max_value_bytes) +
                " bytes");
  while (end_ < need) {
    const std::size_t n = source_ended_ ? 0 : source_.read(buf_.get() + end_, kBufferSize - end_);
    if (n == 0) {
      source_ended_ = true;
      pos_ = end_;  // report the offset where the input stopped
      return fail("the input ended");
    }
    end_ += n;
  }
  return true;
}

bool Reader::skip(std::uint64_t n) {
  while (n > 0) {
    if (pos_ == end_ && !fill(1)) return false;
    const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n, end_ - pos_));
    pos_ += take;
    n -= take;
  }
  return true;
}

bool Reader::read_raw(void* dst, std::size_t n) {
  if (!fill(n)) return false;
  std::memcpy(dst, buf_.get() + pos_, n);
  pos_ += n;
  return true;
}

bool Reader::read_u8(std::uint8_t& v) {
  if (pos_ == end_ && !fill(1)) return false;
  v = static_cast<std::uint8_t>(buf_[pos_++]);
  return true;
}

// ---------------------------------------------------------------------------------------------------------
// Reader: lengths and strings

bool Reader::read_len(std::uint64_t& len, bool& encoded) {
  if (!fill(1)) return false;
  const auto first = static_cast<std::uint8_t>(buf_[pos_]);
  encoded = false;
  switch (first >> 6) {
    case kLen6:
      len = first & 0x3f;
      pos_ += 1;
      return true;
    case kLen14:
      if (!fill(2)) return false;
      len = (static_cast<std::uint64_t>(first & 0x3f) << 8) | static_cast<std::uint8_t>(buf_[pos_ + 1]);
      pos_ += 2;
      return true;
    case kLenEncoded:
      encoded = true;
      len = first & 0x3f;
      pos_ += 1;
      return true;
    default:
      break;
  }
  if (first == kLen32) {
    if (!fill(5)) return false;
    const auto* p = reinterpret_cast<const unsigned char*>(buf_.get() + pos_ + 1);
    len = (std::uint64_t{p[0]} << 24) | (std::uint64_t{p[1]} << 16) | (std::uint64_t{p[2]} << 8) | p[3];
    pos_ += 5;
    return true;
  }
  if (first == kLen64) {
    if (!fill(9)) return false;
    const auto* p = reinterpret_cast<const unsigned char*>(buf_.get() + pos_ + 1);
    len = 0;
    for (int i = 0; i < 8; ++i)
      len = (len << 8) | p[i];
    pos_ += 9;
    return true;
  }
  return fail("unknown length encoding (first byte " + std::to_string(first) + ")");
}

bool Reader::read_plain_len(std::uint64_t& len) {
  bool encoded = false;
  if (!read_len(len, encoded)) return false;
  if (encoded) return fail("a string encoding where a length was expected");
  return true;
}

bool Reader::read_count(std::uint64_t& n) {
  if (!read_plain_len(n)) return false;
  if (n > limits_.max_elements)
    return fail("a count of " + std::to_string(n) + " elements, above the limit of " +
                std::to_string(limits_.max_elements));
  return true;
}

// Reads an RDB string and decodes it (integer encodings to decimal text, LZF decompressed) into `out`.
bool Reader::read_string(std::string& out, std::size_t limit) {
  out.clear();
  std::uint64_t len = 0;
  bool encoded = false;
  if (!read_len(len, encoded)) return false;
  if (encoded) {
    switch (len) {
      case kEncInt8:
      case kEncInt16:
      case kEncInt32: {
        const int n = len == kEncInt8 ? 1 : len == kEncInt16 ? 2 : 4;
        unsigned char b[4];
        if (!read_raw(b, static_cast<std::size_t>(n))) return false;
        const std::uint64_t u = load_le(b, n);
        const std::int64_t v = n == 1   ? static_cast<std::int8_t>(u)
                               : n == 2 ? static_cast<std::int16_t>(u)
                                        : static_cast<std::int32_t>(u);
        append_int(out, v);
        return true;
      }
      case kEncLzf: {
        std::uint64_t clen = 0, ulen = 0;
        if (!read_plain_len(clen) || !read_plain_len(ulen)) return false;
        if (ulen > limit || clen > limit) {
          return fail("a string of " + std::to_string(std::max(ulen, clen)) + " bytes, above the limit of " +
                      std::to_string(limit));
        }
        if (clen > std::numeric_limits<unsigned>::max() || ulen > std::numeric_limits<unsigned>::max() ||
            ulen > clen * kLzfMaxRatio + 64) {
          return fail("an LZF string whose lengths (" + std::to_string(clen) + " compressed, " +
                      std::to_string(ulen) + " plain) cannot be right");
        }
        scratch_.clear();
        while (scratch_.size() < clen) {
          if (pos_ == end_ && !fill(1)) return false;
          const std::size_t take =
              static_cast<std::size_t>(std::min<std::uint64_t>(clen - scratch_.size(), end_ - pos_));
          scratch_.append(buf_.get() + pos_, take);
          pos_ += take;
        }
        out.resize(static_cast<std::size_t>(ulen));
        if (ulen > 0 && lzf_decompress(scratch_.data(), static_cast<unsigned>(clen), out.data(),
                                       static_cast<unsigned>(ulen)) != ulen) {
          out.clear();
          return fail("an LZF string that does not decompress to its declared length");
        }
        return true;
      }
      default:
        return fail("unknown string encoding " + std::to_string(len));
    }
  }
  if (len > limit)
    return fail("a string of " + std::to_string(len) + " bytes, above the limit of " + std::to_string(limit));
  while (out.size() < len) {
    if (pos_ == end_ && !fill(1)) return false;
    const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(len - out.size(), end_ - pos_));
    out.append(buf_.get() + pos_, take);
    pos_ += take;
  }
  return true;
}

// Walks over an RDB string, whatever its encoding, without decoding it.
bool Reader::skip_string() {
  std::uint64_t len = 0;
  bool encoded = false;
  if (!read_len(len, encoded)) return false;
  if (encoded) {
    switch (len) {
      case kEncInt8:
        return skip(1);
      case kEncInt16:
        return skip(2);
      case kEncInt32:
        return skip(4);
      case kEncLzf: {
        std::uint64_t clen = 0, ulen = 0;
        if (!read_plain_len(clen) || !read_plain_len(ulen)) return false;
        len = clen;
        break;
      }
      default:
        return fail("unknown string encoding " + std::to_string(len));
    }
  }
  if (len > limits_.max_value_bytes)
    return fail("a string of " + std::to_string(len) + " bytes, above the limit of " +
                std::to_string(limits_.max_value_bytes));
  if (capture_ && capture_->size() + (pos_ - capture_from_) + len > limits_.max_value_bytes)
    return fail("a kept value longer than the limit of " + std::to_string(limits_.max_value_bytes) +
                " bytes");
  // The common case, a short string that is already in the buffer, costs one comparison.
  if (end_ - pos_ >= len) {
    pos_ += static_cast<std::size_t>(len);
    return true;
  }
  return skip(len);
}

// A score of the old zset encoding: a length byte (253 nan, 254 +inf, 255 -inf) and that many bytes of text.
bool Reader::skip_text_double() {
  std::uint8_t len = 0;
  if (!read_u8(len)) return false;
  return len >= 253 ? true : skip(len);
}

bool Reader::skip_module_opcodes() {
  for (;;) {
    std::uint64_t op = 0;
    if (!read_plain_len(op)) return false;
    std::uint64_t ignored = 0;
    switch (op) {
      case kModuleEof:
        return true;
      case kModuleSint:
      case kModuleUint:
        if (!read_plain_len(ignored)) return false;
        break;
      case kModuleFloat:
        if (!skip(4)) return false;
        break;
      case kModuleDouble:
        if (!skip(8)) return false;
        break;
      case kModuleString:
        if (!skip_string()) return false;
        break;
      default:
        return fail("unknown module opcode " + std::to_string(op));
    }
  }
}

// Streams (types 15, 19, 21): the listpacks of the radix tree (node key, listpack), the stream's counters,
// then every consumer group with its pending entries and consumers.
bool Reader::skip_stream(std::uint8_t type) {
  std::uint64_t n = 0, ignored = 0;
  if (!read_count(n)) return false;
  for (std::uint64_t i = 0; i < n; ++i) {
    if (!skip_string() || !skip_string()) return false;  // master ID, listpack
  }
  // length, last ID (ms, seq); v2+: first ID, max deleted ID, entries added
  const int counters = type >= kStreamListpacks2 ? 8 : 3;
  for (int i = 0; i < counters; ++i) {
    if (!read_plain_len(ignored)) return false;
  }
  std::uint64_t groups = 0;
  if (!read_count(groups)) return false;
  for (std::uint64_t g = 0; g < groups; ++g) {
    if (!skip_string()) return false;                              // name
    const int group_counters = type >= kStreamListpacks2 ? 3 : 2;  // last ID (ms, seq); v2+: entries read
    for (int i = 0; i < group_counters; ++i) {
      if (!read_plain_len(ignored)) return false;
    }
    std::uint64_t pel = 0;
    if (!read_count(pel)) return false;
    for (std::uint64_t p = 0; p < pel; ++p) {
      // raw 128-bit ID, delivery time (8 bytes), delivery count
      if (!skip(16 + 8) || !read_plain_len(ignored)) return false;
    }
    std::uint64_t consumers = 0;
    if (!read_count(consumers)) return false;
    for (std::uint64_t c = 0; c < consumers; ++c) {
      // name, seen time; v3: active time
      if (!skip_string() || !skip(type >= kStreamListpacks3 ? 16 : 8)) return false;
      std::uint64_t own = 0;
      if (!read_count(own)) return false;
      if (!skip(own * 16)) return false;  // raw IDs
    }
  }
  return true;
}

bool Reader::known_type(std::uint8_t type) const {
  if (type <= kModule2 || (type >= kHashZipmap && type <= kStreamListpacks3)) return true;
  if (header_.flavor == Flavor::kRedis)
    return header_.version >= 12 && type >= kRedisHashMetadataPreGa && type <= kRedisHashListpackEx;
  return type == kValkeyHash2;
}

// Walks one value's outer structure: lengths, strings (as opaque blobs, listpacks and ziplists included),
// scores, stream records, module opcodes.
bool Reader::skip_value(std::uint8_t type) {
  std::uint64_t n = 0;
  switch (type) {
    case kString:
    case kHashZipmap:
    case kListZiplist:
    case kSetIntset:
    case kZsetZiplist:
    case kHashZiplist:
    case kHashListpack:
    case kZsetListpack:
    case kSetListpack:
      return skip_string();
    case kList:
    case kSet:
    case kListQuicklist:
      if (!read_count(n)) return false;
      for (std::uint64_t i = 0; i < n; ++i) {
        if (!skip_string()) return false;
      }
      return true;
    case kHash:
      if (!read_count(n)) return false;
      for (std::uint64_t i = 0; i < n; ++i) {
        if (!skip_string() || !skip_string()) return false;
      }
      return true;
    case kZset:
      if (!read_count(n)) return false;
      for (std::uint64_t i = 0; i < n; ++i) {
        if (!skip_string() || !skip_text_double()) return false;
      }
      return true;
    case kZset2:
      if (!read_count(n)) return false;
      for (std::uint64_t i = 0; i < n; ++i) {
        if (!skip_string() || !skip(8)) return false;
      }
      return true;
    case kModulePreGa:
      return fail("a module value of the 4.0 release candidates (type 6), which no server can load");
    case kModule2: {
      std::uint64_t module_id = 0;
      return read_plain_len(module_id) && skip_module_opcodes();
    }
    case kListQuicklist2:
      if (!read_count(n)) return false;
      for (std::uint64_t i = 0; i < n; ++i) {
        std::uint64_t container = 0;
        if (!read_plain_len(container)) return false;
        if (container != kQuicklistPlain && container != kQuicklistPacked)
          return fail("unknown quicklist node container " + std::to_string(container));
        if (!skip_string()) return false;
      }
      return true;
    case kStreamListpacks:
    case kStreamListpacks2:
    case kStreamListpacks3:
      return skip_stream(type);
    default:
      break;
  }
  if (header_.flavor == Flavor::kRedis) {
    switch (type) {
      case kRedisHashMetadata:
      case kRedisHashMetadataPreGa:
        // GA: the smallest field expiry (8 bytes), then per field a TTL relative to it; pre-GA: absolute
        // TTLs.
        if (type == kRedisHashMetadata && !skip(8)) return false;
        if (!read_count(n)) return false;
        for (std::uint64_t i = 0; i < n; ++i) {
          std::uint64_t ttl = 0;
          if (!read_plain_len(ttl) || !skip_string() || !skip_string()) return false;
        }
        return true;
      case kRedisHashListpackEx:
        return skip(8) && skip_string();  // smallest field expiry, then the listpack
      case kRedisHashListpackExPreGa:
        return skip_string();
      default:
        break;
    }
  } else if (type == kValkeyHash2) {
    // Per field: name, value, expiry (8 bytes, -1 for none).
    if (!read_count(n)) return false;
    for (std::uint64_t i = 0; i < n; ++i) {
      if (!skip_string() || !skip_string() || !skip(8)) return false;
    }
    return true;
  }
  return fail("unknown value type " + std::to_string(type));
}

// ---------------------------------------------------------------------------------------------------------
// Reader: the file

bool Reader::read_header() {
  context_ = "the header";
  char magic[9];
  if (!read_raw(magic, sizeof magic)) return false;
  const std::string_view m(magic, sizeof magic);
  auto digits = [](std::string_view d, int& v) {
    v = 0;
    for (char c : d) {
      if (c < '0' || c > '9') return false;
      v = v * 10 + (c - '0');
    }
    return true;
  };
  int version = 0;
  if (m.substr(0, 5) == "REDIS" && digits(m.substr(5), version)) {
    // RDB 5 (Redis 2.6) brought the checksum; nothing older is accepted, so that a damaged version digit
    // cannot turn a file into one that is not checked.
    if (version < 5 || version > 12) {
      pos_ = 0;
      return fail("RDB version " + std::to_string(version) +
                  " under a REDIS header: this reader knows 5 to 12 (Redis 2.6 to 8.x)");
    }
    header_ = Header{Flavor::kRedis, version};
    return true;
  }
  if (m.substr(0, 6) == "VALKEY" && digits(m.substr(6), version)) {
    if (version < 80 || version > 81) {
      pos_ = 0;
      return fail("RDB version " + std::to_string(version) +
                  " under a VALKEY header: this reader knows 80 and 81 (Valkey 9)");
    }
    header_ = Header{Flavor::kValkey, version};
    return true;
  }
  pos_ = 0;
  return fail("not an RDB file (it starts with '" + printable(m) + "')");
}

Result Reader::next(Entry& out, const std::function<bool(int db, std::string_view key)>& want) {
  if (failed_) return Result::kError;
  if (done_) return Result::kEnd;
  if (header_.version == 0) {
    fail("next() before read_header()");
    return Result::kError;
  }
  out.expire_ms = -1;
  out.idle_s.reset();
  out.freq.reset();
  out.value.clear();
  out.kept = false;
  out.value_size = 0;
  context_key_ = {};

  for (;;) {
    context_ = "an opcode or type";
    std::uint8_t type = 0;
    if (!read_u8(type)) return Result::kError;
    std::uint64_t a = 0, b = 0;
    switch (type) {
      case kOpEof: {
        context_ = "the checksum";
        // Everything before the checksum, this byte included, is covered by it.
        crc_ = crc64(crc_, buf_.get() + crc_from_, pos_ - crc_from_);
        crc_from_ = pos_;
        unsigned char sum[8];
        if (!read_raw(sum, sizeof sum)) return Result::kError;
        const std::uint64_t expected = load_le(sum, 8);
        if (expected != 0 && expected != crc_) {  // 0: saved with rdbchecksum no
          pos_ -= 8;
          fail("checksum mismatch: the file says " + std::to_string(expected) + ", the bytes give " +
               std::to_string(crc_));
          return Result::kError;
        }
        crc_from_ = pos_;
        done_ = true;
        return Result::kEnd;
      }
      case kOpSelectDb:
        context_ = "SELECTDB";
        if (!read_plain_len(a)) return Result::kError;
        if (a > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) {
          fail("database number " + std::to_string(a));
          return Result::kError;
        }
        db_ = static_cast<int>(a);
        continue;
      case kOpExpireTime: {
        context_ = "EXPIRETIME";
        unsigned char t[4];
        if (!read_raw(t, sizeof t)) return Result::kError;
        out.expire_ms = static_cast<std::int64_t>(static_cast<std::int32_t>(load_le(t, 4))) * 1000;
        continue;
      }
      case kOpExpireTimeMs: {
        context_ = "EXPIRETIME_MS";
        unsigned char t[8];
        if (!read_raw(t, sizeof t)) return Result::kError;
        out.expire_ms = static_cast<std::int64_t>(load_le(t, 8));
        continue;
      }
      case kOpResizeDb:
        context_ = "RESIZEDB";
        if (!read_plain_len(a) || !read_plain_len(b)) return Result::kError;
        continue;
      case kOpAux: {
        context_ = "an aux field";
        std::string k, v;
        if (!read_string(k, limits_.max_key_bytes) || !read_string(v, limits_.max_value_bytes))
          return Result::kError;
        aux_[std::move(k)] = std::move(v);
        continue;
      }
      case kOpFreq: {
        context_ = "FREQ";
        std::uint8_t f = 0;
        if (!read_u8(f)) return Result::kError;
        out.freq = f;
        continue;
      }
      case kOpIdle:
        context_ = "IDLE";
        if (!read_plain_len(a)) return Result::kError;
        out.idle_s = a;
        continue;
      case kOpModuleAux:
        context_ = "module aux data";
        // module id, then "when" as a UINT opcode and its value, then the module's opcode stream
        if (!read_plain_len(a) || !read_plain_len(b)) return Result::kError;
        if (b != kModuleUint) {
          fail("module aux data without its 'when' field");
          return Result::kError;
        }
        if (!read_plain_len(a) || !skip_module_opcodes()) return Result::kError;
        continue;
      case kOpFunctionPreGa:
        context_ = "a function";
        fail("a function library of the 7.0 release candidates (opcode 246), which no server can load");
        return Result::kError;
      case kOpFunction2: {
        context_ = "a function library";
        std::string code;
        if (!read_string(code, limits_.max_value_bytes)) return Result::kError;
        functions_.push_back(std::move(code));
        continue;
      }
      case kOpSlotInfo:
        context_ = "SLOT_INFO";
        if (!read_plain_len(a) || !read_plain_len(b) || !read_plain_len(a)) return Result::kError;
        continue;
      default:
        break;
    }
    // Valkey's slot import state: a job name, then (first, last) slot ranges. Valkey writes it only with its
    // own formats, but an RDB 11 file (the only REDIS version Valkey writes) is let through as well.
    if (type == kOpSlotImport && (header_.flavor == Flavor::kValkey || header_.version == 11)) {
      context_ = "SLOT_IMPORT";
      std::uint64_t ranges = 0;
      if (!skip_string() || !read_count(ranges)) return Result::kError;
      for (std::uint64_t i = 0; i < ranges; ++i) {
        if (!read_plain_len(a) || !read_plain_len(b)) return Result::kError;
      }
      continue;
    }
    if (!known_type(type)) {
      pos_ -= 1;
      fail("byte " + std::to_string(type) + " is neither an opcode nor a value type of " +
           (header_.flavor == Flavor::kRedis ? "REDIS" : "VALKEY") + " version " +
           std::to_string(header_.version));
      return Result::kError;
    }

    // A key and its value.
    context_ = "a key";
    out.db = db_;
    out.type = type;
    if (!read_string(out.key, limits_.max_key_bytes)) return Result::kError;
    context_ = "the value";
    context_key_ = out.key;
    const bool keep = want ? want(db_, out.key) : true;
    const std::uint64_t start = bytes_read();
    if (keep) {
      capture_ = &out.value;
      capture_from_ = pos_;
    }
    const bool ok = skip_value(type);
    if (keep) {
      if (ok) out.value.append(buf_.get() + capture_from_, pos_ - capture_from_);
      capture_ = nullptr;
      if (ok && out.value.size() > limits_.max_value_bytes) {
        fail("a kept value longer than the limit of " + std::to_string(limits_.max_value_bytes) + " bytes");
        return Result::kError;
      }
    }
    if (!ok) return Result::kError;
    out.kept = keep;
    out.value_size = static_cast<std::size_t>(bytes_read() - start);
    context_key_ = {};
    return Result::kEntry;
  }
}

// ---------------------------------------------------------------------------------------------------------
// DUMP payloads

std::string dump_payload(std::uint8_t type, std::string_view value, std::uint16_t rdb_version) {
  std::string out;
  out.reserve(1 + value.size() + 2 + 8);
  out.push_back(static_cast<char>(type));
  out.append(value);
  store_le(out, rdb_version, 2);
  store_le(out, crc64(0, out), 8);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// rebuild_commands: decoding values

namespace {

// Reads the primitives of a value held in memory. Every read is bounds-checked; the first failure sets
// `error` and every later read fails too.
class Cursor {
 public:
  explicit Cursor(std::string_view bytes) : p_(bytes) {}

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  bool at_end() const { return p_.empty(); }
  bool fail(std::string what) {
    if (error_.empty()) error_ = std::move(what);
    return false;
  }

  bool raw(std::size_t n, std::string_view& out) {
    if (!ok()) return false;
    if (p_.size() < n) return fail("the value ends too early");
    out = p_.substr(0, n);
    p_.remove_prefix(n);
    return true;
  }
  bool u8(std::uint8_t& v) {
    std::string_view s;
    if (!raw(1, s)) return false;
    v = static_cast<std::uint8_t>(s[0]);
    return true;
  }
  bool le(int n, std::uint64_t& v) {
    std::string_view s;
    if (!raw(static_cast<std::size_t>(n), s)) return false;
    v = load_le(reinterpret_cast<const unsigned char*>(s.data()), n);
    return true;
  }
  bool len(std::uint64_t& v, bool& encoded) {
    std::uint8_t first = 0;
    if (!u8(first)) return false;
    encoded = false;
    switch (first >> 6) {
      case kLen6:
        v = first & 0x3f;
        return true;
      case kLen14: {
        std::uint8_t second = 0;
        if (!u8(second)) return false;
        v = (static_cast<std::uint64_t>(first & 0x3f) << 8) | second;
        return true;
      }
      case kLenEncoded:
        encoded = true;
        v = first & 0x3f;
        return true;
      default:
        break;
    }
    std::string_view s;
    const std::size_t n = first == kLen32 ? 4 : first == kLen64 ? 8 : 0;
    if (n == 0) return fail("unknown length encoding");
    if (!raw(n, s)) return false;
    v = 0;
    for (unsigned char c : s)
      v = (v << 8) | c;
    return true;
  }
  bool plain_len(std::uint64_t& v) {
    bool encoded = false;
    if (!len(v, encoded)) return false;
    if (encoded) return fail("a string encoding where a length was expected");
    return true;
  }
  // A count of elements that each take at least `min_bytes` of the value: no larger count can be right.
  bool count(std::uint64_t& n, std::size_t min_bytes) {
    if (!plain_len(n)) return false;
    if (n > p_.size() / std::max<std::size_t>(min_bytes, 1)) return fail("a count larger than the value");
    return true;
  }
  // An RDB string, decoded. Points into the value when it is stored plain; otherwise into `storage`.
  bool string(std::string_view& out, std::string& storage) {
    std::uint64_t n = 0;
    bool encoded = false;
    if (!len(n, encoded)) return false;
    if (!encoded) return raw_checked(n, out);
    std::uint64_t u = 0;
    switch (n) {
      case kEncInt8:
        if (!le(1, u)) return false;
        storage.clear();
        append_int(storage, static_cast<std::int8_t>(u));
        break;
      case kEncInt16:
        if (!le(2, u)) return false;
        storage.clear();
        append_int(storage, static_cast<std::int16_t>(u));
        break;
      case kEncInt32:
        if (!le(4, u)) return false;
        storage.clear();
        append_int(storage, static_cast<std::int32_t>(u));
        break;
      case kEncLzf: {
        std::uint64_t clen = 0, ulen = 0;
        std::string_view c;
        if (!plain_len(clen) || !plain_len(ulen) || !raw_checked(clen, c)) return false;
        if (clen > std::numeric_limits<unsigned>::max() || ulen > std::numeric_limits<unsigned>::max() ||
            ulen > clen * kLzfMaxRatio + 64)
          return fail("an LZF string whose lengths cannot be right");
        storage.resize(static_cast<std::size_t>(ulen));
        if (ulen > 0 && lzf_decompress(c.data(), static_cast<unsigned>(clen), storage.data(),
                                       static_cast<unsigned>(ulen)) != ulen)
          return fail("an LZF string that does not decompress to its declared length");
        break;
      }
      default:
        return fail("unknown string encoding");
    }
    out = storage;
    return true;
  }

 private:
  bool raw_checked(std::uint64_t n, std::string_view& out) {
    if (n > p_.size()) return fail("the value ends too early");
    return raw(static_cast<std::size_t>(n), out);
  }

  std::string_view p_;
  std::string error_;
};

// Elements of a listpack, in order, as text (integers printed in decimal).
template <typename F>
bool for_each_listpack(std::string_view lp, std::string& error, F&& f) {
  const auto* p = reinterpret_cast<const unsigned char*>(lp.data());
  const std::size_t size = lp.size();
  if (size < 7 || load_le(p, 4) != size || p[size - 1] != 0xff) {
    error = "a malformed listpack (header or terminator)";
    return false;
  }
  std::size_t i = 6;
  char intbuf[24];
  while (i < size - 1) {
    const unsigned char c = p[i];
    std::size_t header = 1, data = 0;
    bool is_int = true;
    std::uint64_t uval = 0;
    int bits = 0;
    const std::size_t left = size - 1 - i;
    auto need = [&](std::size_t n) { return n <= left; };
    if ((c & 0x80) == 0) {  // 7-bit unsigned
      uval = c & 0x7f;
      bits = 0;
    } else if ((c & 0xc0) == 0x80) {  // 6-bit length string
      is_int = false;
      data = c & 0x3f;
    } else if ((c & 0xe0) == 0xc0) {  // 13-bit int
      if (!need(2)) break;
      header = 2;
      uval = (static_cast<std::uint64_t>(c & 0x1f) << 8) | p[i + 1];
      bits = 13;
    } else if ((c & 0xf0) == 0xe0) {  // 12-bit length string
      if (!need(2)) break;
      is_int = false;
      header = 2;
      data = (static_cast<std::size_t>(c & 0x0f) << 8) | p[i + 1];
    } else if (c == 0xf0) {  // 32-bit length string
      if (!need(5)) break;
      is_int = false;
      header = 5;
      data = static_cast<std::size_t>(load_le(p + i + 1, 4));
    } else if (c >= 0xf1 && c <= 0xf4) {  // 16, 24, 32, 64-bit ints
      static constexpr int kBytes[] = {2, 3, 4, 8};
      const int n = kBytes[c - 0xf1];
      if (!need(1 + static_cast<std::size_t>(n))) break;
      header = 1 + static_cast<std::size_t>(n);
      uval = load_le(p + i + 1, n);
      bits = 8 * n;
    } else {
      error = "a listpack entry with unknown encoding " + std::to_string(c);
      return false;
    }
    const std::size_t enc = header + data;
    const std::size_t backlen = enc <= 127        ? 1
                                : enc < 16383     ? 2
                                : enc < 2097151   ? 3
                                : enc < 268435455 ? 4
                                                  : 5;
    if (data > left || enc + backlen > left) break;
    if (is_int) {
      std::int64_t v = 0;
      if (bits == 0 || bits == 64) {
        v = static_cast<std::int64_t>(uval);
      } else if (uval >= (std::uint64_t{1} << (bits - 1))) {  // two's complement of `bits` bits
        v = static_cast<std::int64_t>(uval) - static_cast<std::int64_t>(std::uint64_t{1} << bits);
      } else {
        v = static_cast<std::int64_t>(uval);
      }
      const auto r = std::to_chars(intbuf, intbuf + sizeof intbuf, v);
      f(std::string_view(intbuf, static_cast<std::size_t>(r.ptr - intbuf)));
    } else {
      f(std::string_view(lp.data() + i + header, data));
    }
    i += enc + backlen;
  }
  if (i != size - 1) {
    error = "a malformed listpack (an entry runs past its end)";
    return false;
  }
  return true;
}

// Elements of a ziplist (RDB < 10 lists, hashes and zsets, and quicklist nodes before RDB 10).
template <typename F>
bool for_each_ziplist(std::string_view zl, std::string& error, F&& f) {
  const auto* p = reinterpret_cast<const unsigned char*>(zl.data());
  const std::size_t size = zl.size();
  if (size < 11 || load_le(p, 4) != size || p[size - 1] != 0xff) {
    error = "a malformed ziplist (header or terminator)";
    return false;
  }
  std::size_t i = 10;
  char intbuf[24];
  while (i < size - 1) {
    std::size_t left = size - 1 - i;
    const std::size_t prevlen = p[i] < 254 ? 1 : 5;
    if (prevlen >= left) break;
    i += prevlen;
    left -= prevlen;
    const unsigned char c = p[i];
    if ((c >> 6) != 3) {  // a string
      std::size_t header = 1, n = 0;
      if ((c >> 6) == 0) {
        n = c & 0x3f;
      } else if ((c >> 6) == 1) {
        if (left < 2) break;
        header = 2;
        n = (static_cast<std::size_t>(c & 0x3f) << 8) | p[i + 1];
      } else if (c == 0x80) {
        if (left < 5) break;
        header = 5;
        n = (static_cast<std::size_t>(p[i + 1]) << 24) | (static_cast<std::size_t>(p[i + 2]) << 16) |
            (static_cast<std::size_t>(p[i + 3]) << 8) | p[i + 4];
      } else {
        error = "a ziplist entry with unknown encoding " + std::to_string(c);
        return false;
      }
      if (header + n > left) break;
      f(std::string_view(zl.data() + i + header, n));
      i += header + n;
      continue;
    }
    std::int64_t v = 0;
    std::size_t n = 0;
    switch (c) {
      case 0xfe:
        n = 1;
        break;  // int8
      case 0xc0:
        n = 2;
        break;  // int16
      case 0xf0:
        n = 3;
        break;  // int24
      case 0xd0:
        n = 4;
        break;  // int32
      case 0xe0:
        n = 8;
        break;  // int64
      default:
        if (c >= 0xf1 && c <= 0xfd) {  // 4-bit immediate 0..12
          v = (c & 0x0f) - 1;
        } else {
          error = "a ziplist entry with unknown encoding " + std::to_string(c);
          return false;
        }
    }
    if (1 + n > left) break;
    if (n > 0) {
      const std::uint64_t u = load_le(p + i + 1, static_cast<int>(n));
      const int bits = static_cast<int>(8 * n);
      v = bits == 64 || u < (std::uint64_t{1} << (bits - 1))
              ? static_cast<std::int64_t>(u)
              : static_cast<std::int64_t>(u) - static_cast<std::int64_t>(std::uint64_t{1} << bits);
    }
    const auto r = std::to_chars(intbuf, intbuf + sizeof intbuf, v);
    f(std::string_view(intbuf, static_cast<std::size_t>(r.ptr - intbuf)));
    i += 1 + n;
  }
  if (i != size - 1) {
    error = "a malformed ziplist (an entry runs past its end)";
    return false;
  }
  return true;
}

// Members of an intset: encoding (2, 4 or 8 bytes per member), count, members; all little-endian.
template <typename F>
bool for_each_intset(std::string_view is, std::string& error, F&& f) {
  const auto* p = reinterpret_cast<const unsigned char*>(is.data());
  if (is.size() < 8) {
    error = "a malformed intset";
    return false;
  }
  const std::uint64_t width = load_le(p, 4), count = load_le(p + 4, 4);
  if ((width != 2 && width != 4 && width != 8) || is.size() != 8 + count * width) {
    error = "a malformed intset";
    return false;
  }
  char intbuf[24];
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t u = load_le(p + 8 + i * width, static_cast<int>(width));
    const std::int64_t v = width == 2   ? static_cast<std::int16_t>(u)
                           : width == 4 ? static_cast<std::int32_t>(u)
                                        : static_cast<std::int64_t>(u);
    const auto r = std::to_chars(intbuf, intbuf + sizeof intbuf, v);
    f(std::string_view(intbuf, static_cast<std::size_t>(r.ptr - intbuf)));
  }
  return true;
}

// Fields and values of a zipmap (hashes of RDB < 4): a count byte, then per pair a key length (1 byte, or 254
// and 4 bytes), the key, a value length, one "free" byte, the value and that many unused bytes; 255 ends it.
template <typename F>
bool for_each_zipmap(std::string_view zm, std::string& error, F&& f) {
  const auto* p = reinterpret_cast<const unsigned char*>(zm.data());
  std::size_t i = 1;
  const std::size_t size = zm.size();
  auto length = [&](std::size_t& n) {
    if (i >= size) return false;
    if (p[i] < 254) {
      n = p[i++];
      return true;
    }
    if (p[i] == 255 || i + 5 > size) return false;
    n = static_cast<std::size_t>(load_le(p + i + 1, 4));
    i += 5;
    return true;
  };
  bool bad = false;
  while (i < size && p[i] != 255) {
    std::size_t klen = 0, vlen = 0;
    if (!length(klen) || klen > size - i) {
      bad = true;
      break;
    }
    const std::string_view k = zm.substr(i, klen);
    i += klen;
    if (!length(vlen) || i >= size) {
      bad = true;
      break;
    }
    const std::size_t free = p[i++];
    if (vlen > size - i || free > size - i - vlen) {
      bad = true;
      break;
    }
    f(k, zm.substr(i, vlen));
    i += vlen + free;
  }
  if (bad || size < 2 || i != size - 1 || p[i] != 255) {
    error = "a malformed zipmap";
    return false;
  }
  return true;
}

// Shortest text that parses back (strtod, as Redis does) to exactly this score.
bool score_text(double d, std::string& out, std::string& error) {
  out.clear();
  if (std::isnan(d)) {
    error = "a NaN score";
    return false;
  }
  if (std::isinf(d)) {
    out = d > 0 ? "inf" : "-inf";
    return true;
  }
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, d);
  out.assign(buf, r.ptr);
  return true;
}

// Accumulates one command's arguments and emits it once it carries about chunk_bytes of element data.
class Batcher {
 public:
  Batcher(std::vector<std::string> prefix, std::size_t chunk_bytes,
          const std::function<void(std::vector<std::string>&&)>& emit)
      : prefix_(std::move(prefix)), chunk_bytes_(std::max<std::size_t>(chunk_bytes, 1)), emit_(emit) {}
  ~Batcher() = default;

  // Adds one element (a group of arguments that must stay together: a field and its value, a score and its
  // member).
  void add(std::initializer_list<std::string_view> args) {
    if (args_.empty()) args_ = prefix_;
    for (auto a : args) {
      args_.emplace_back(a);
      bytes_ += a.size() + 8;
    }
    if (bytes_ >= chunk_bytes_) flush();
  }
  void flush() {
    if (args_.size() > prefix_.size()) emit_(std::move(args_));
    args_.clear();
    bytes_ = 0;
  }

 private:
  std::vector<std::string> prefix_;
  std::size_t chunk_bytes_;
  const std::function<void(std::vector<std::string>&&)>& emit_;
  std::vector<std::string> args_;
  std::size_t bytes_ = 0;
};

struct FieldTtl {
  std::int64_t at_ms;
  std::string field;
};

void emit_field_ttls(std::string_view key, std::vector<FieldTtl>& ttls, std::size_t chunk_bytes,
                     const std::function<void(std::vector<std::string>&&)>& emit) {
  std::stable_sort(ttls.begin(), ttls.end(),
                   [](const FieldTtl& a, const FieldTtl& b) { return a.at_ms < b.at_ms; });
  std::size_t i = 0;
  while (i < ttls.size()) {
    std::vector<std::string> cmd{"HPEXPIREAT", std::string(key), std::to_string(ttls[i].at_ms), "FIELDS", ""};
    std::size_t bytes = 0, n = 0;
    const std::int64_t at = ttls[i].at_ms;
    while (i < ttls.size() && ttls[i].at_ms == at && (n == 0 || bytes < chunk_bytes)) {
      bytes += ttls[i].field.size() + 8;
      cmd.push_back(std::move(ttls[i].field));
      ++n;
      ++i;
    }
    cmd[4] = std::to_string(n);
    emit(std::move(cmd));
  }
}

}  // namespace

bool rebuild_commands(std::string_view key, std::uint8_t type, std::string_view value, const Header& header,
                      std::size_t chunk_bytes,
                      const std::function<void(std::vector<std::string>&& command)>& emit,
                      std::string& error) {
  error.clear();
  Cursor in(value);
  std::string s1, s2, s3;  // storage for decoded (int-encoded or compressed) strings
  std::string_view a, b;
  const std::string k(key);
  auto finish = [&](bool ok) {
    if (ok && in.ok() && !in.at_end()) in.fail("bytes left over after the value");
    if (!in.ok()) {
      error = "cannot rebuild key '" + printable(key) + "' (" + std::string(type_name(type, header)) +
              "): " + in.error();
      return false;
    }
    if (!ok) {
      error = "cannot rebuild key '" + printable(key) + "' (" + std::string(type_name(type, header)) +
              "): " + error;
      return false;
    }
    return true;
  };
  std::uint64_t n = 0;

  switch (type) {
    case kString: {
      if (!in.string(a, s1)) return finish(false);
      std::size_t off = 0;
      const std::size_t step = std::max<std::size_t>(chunk_bytes, 1);
      do {
        const std::size_t take = std::min(step, a.size() - off);
        emit({off == 0 ? "SET" : "APPEND", k, std::string(a.substr(off, take))});
        off += take;
      } while (off < a.size());
      return finish(true);
    }

    case kList:
    case kListZiplist:
    case kListQuicklist:
    case kListQuicklist2: {
      Batcher batch({"RPUSH", k}, chunk_bytes, emit);
      auto push = [&](std::string_view e) { batch.add({e}); };
      bool ok = true;
      if (type == kList) {
        if (!in.count(n, 1)) return finish(false);
        for (std::uint64_t i = 0; i < n && in.string(a, s1); ++i)
          push(a);
      } else if (type == kListZiplist) {
        ok = in.string(a, s1) && for_each_ziplist(a, error, push);
      } else {
        if (!in.count(n, type == kListQuicklist2 ? 2 : 1)) return finish(false);
        for (std::uint64_t i = 0; ok && i < n; ++i) {
          std::uint64_t container = kQuicklistPacked;
          if (type == kListQuicklist2 && !in.plain_len(container)) break;
          if (!in.string(a, s1)) break;
          if (type == kListQuicklist) {
            ok = for_each_ziplist(a, error, push);
          } else if (container == kQuicklistPlain) {
            push(a);
          } else if (container == kQuicklistPacked) {
            ok = for_each_listpack(a, error, push);
          } else {
            in.fail("unknown quicklist node container " + std::to_string(container));
          }
        }
      }
      if (!ok || !in.ok()) return finish(ok);
      batch.flush();
      return finish(true);
    }

    case kSet:
    case kSetIntset:
    case kSetListpack: {
      Batcher batch({"SADD", k}, chunk_bytes, emit);
      auto add = [&](std::string_view e) { batch.add({e}); };
      bool ok = true;
      if (type == kSet) {
        if (!in.count(n, 1)) return finish(false);
        for (std::uint64_t i = 0; i < n && in.string(a, s1); ++i)
          add(a);
      } else if (type == kSetIntset) {
        ok = in.string(a, s1) && for_each_intset(a, error, add);
      } else {
        ok = in.string(a, s1) && for_each_listpack(a, error, add);
      }
      if (!ok || !in.ok()) return finish(ok);
      batch.flush();
      return finish(true);
    }

    case kZset:
    case kZset2:
    case kZsetZiplist:
    case kZsetListpack: {
      Batcher batch({"ZADD", k}, chunk_bytes, emit);
      if (type == kZset || type == kZset2) {
        if (!in.count(n, type == kZset ? 2 : 9)) return finish(false);
        for (std::uint64_t i = 0; i < n; ++i) {
          if (!in.string(a, s1)) break;
          if (type == kZset2) {
            std::uint64_t bits = 0;
            if (!in.le(8, bits)) break;
            double d;
            std::memcpy(&d, &bits, sizeof d);
            if (!score_text(d, s2, error)) return finish(false);
          } else {
            std::uint8_t len = 0;
            if (!in.u8(len)) break;
            if (len == 253) {
              error = "a NaN score";
              return finish(false);
            }
            if (len >= 254) {
              s2 = len == 254 ? "inf" : "-inf";
            } else {
              std::string_view t;
              if (!in.raw(len, t)) break;
              s2.assign(t);
            }
          }
          batch.add({s2, a});
        }
      } else {
        // Member, score, member, score, ...: the scores are the text (or integer) Redis stored, which parses
        // back to the same double.
        bool member = true;
        std::string pending;
        auto pair = [&](std::string_view e) {
          if (member) {
            pending.assign(e);
          } else {
            batch.add({e, pending});
          }
          member = !member;
        };
        const bool ok = in.string(a, s1) && (type == kZsetZiplist ? for_each_ziplist(a, error, pair)
                                                                  : for_each_listpack(a, error, pair));
        if (!ok) return finish(false);
        if (!member) {
          error = "a member without a score";
          return finish(false);
        }
      }
      if (!in.ok()) return finish(false);
      batch.flush();
      return finish(true);
    }

    default:
      break;
  }

  // Hashes, with field TTLs where the format has them.
  const bool redis = header.flavor == Flavor::kRedis;
  const bool valkey_hash2 = !redis && type == kValkeyHash2;
  const bool redis_ttl =
      redis && header.version >= 12 && type >= kRedisHashMetadataPreGa && type <= kRedisHashListpackEx;
  if (type == kHash || type == kHashZipmap || type == kHashZiplist || type == kHashListpack || valkey_hash2 ||
      redis_ttl) {
    Batcher batch({"HSET", k}, chunk_bytes, emit);
    std::vector<FieldTtl> ttls;
    bool ok = true;
    if (type == kHash || valkey_hash2 || type == kRedisHashMetadata ||
        (redis_ttl && type == kRedisHashMetadataPreGa)) {
      std::uint64_t min_expire = 0;
      if (redis_ttl && type == kRedisHashMetadata && !in.le(8, min_expire)) return finish(false);
      if (!in.count(n, valkey_hash2 ? 10 : redis_ttl ? 3 : 2)) return finish(false);
      for (std::uint64_t i = 0; i < n; ++i) {
        std::uint64_t ttl = 0;
        if (redis_ttl && !in.plain_len(ttl)) break;
        if (!in.string(a, s1) || !in.string(b, s2)) break;
        std::int64_t at = -1;
        if (valkey_hash2) {
          std::uint64_t u = 0;
          if (!in.le(8, u)) break;
          at = static_cast<std::int64_t>(u);  // -1: no expiry
        } else if (redis_ttl && ttl != 0) {
          // GA: relative to the smallest expiry, plus one (0 means none); pre-GA: absolute.
          at = static_cast<std::int64_t>(type == kRedisHashMetadata ? ttl + min_expire - 1 : ttl);
        }
        batch.add({a, b});
        if (at >= 0) ttls.push_back({at, std::string(a)});
      }
    } else if (type == kHashZipmap) {
      ok = in.string(a, s1) && for_each_zipmap(a, error, [&](std::string_view f, std::string_view v) {
             batch.add({f, v});
           });
    } else {
      // Listpacks and ziplists of field, value (and, with field TTLs, an expiry time: 0 for none).
      if (type == kRedisHashListpackEx) {
        std::uint64_t min_expire = 0;
        if (!in.le(8, min_expire)) return finish(false);
      }
      const int width =
          (type == kRedisHashListpackEx || type == kRedisHashListpackExPreGa) && redis_ttl ? 3 : 2;
      int at = 0;
      std::string field, val;
      auto element = [&](std::string_view e) {
        if (at == 0) {
          field.assign(e);
        } else if (at == 1) {
          val.assign(e);
          if (width == 2) batch.add({field, val});
        } else {
          std::int64_t t = 0;
          const auto r = std::from_chars(e.data(), e.data() + e.size(), t);
          if (r.ec != std::errc() || r.ptr != e.data() + e.size() || t < 0) {
            in.fail("a field TTL that is not a time");
          } else {
            batch.add({field, val});
            if (t != 0) ttls.push_back({t, field});
          }
        }
        at = (at + 1) % width;
      };
      ok = in.string(a, s1) && (type == kHashZiplist ? for_each_ziplist(a, error, element)
                                                     : for_each_listpack(a, error, element));
      if (ok && at != 0) {
        error = "a listpack that ends in the middle of a field";
        ok = false;
      }
    }
    if (!ok || !in.ok()) return finish(ok);
    batch.flush();
    emit_field_ttls(key, ttls, chunk_bytes, emit);
    return finish(true);
  }

  if (type == kStreamListpacks || type == kStreamListpacks2 || type == kStreamListpacks3) {
    error = "cannot rebuild key '" + printable(key) +
            "': a stream (its consumer groups and pending entries have no command form); restore it whole";
    return false;
  }
  if (type == kModule2 || type == kModulePreGa) {
    error = "cannot rebuild key '" + printable(key) + "': a module value can only be restored whole";
    return false;
  }
  error = "cannot rebuild key '" + printable(key) + "': unknown value type " + std::to_string(type) +
          " for " + (redis ? "REDIS" : "VALKEY") + " version " + std::to_string(header.version);
  return false;
}

}  // namespace slotshift::rdb
