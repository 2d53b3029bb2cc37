// RESP2/RESP3: an incremental, zero-copy scanner that finds message boundaries (and, for requests, the
// arguments), a value tree for the few replies that must be decoded and merged, and an encoder.
//
// Why a scanner of our own rather than hiredis's reader: Debian 12's libhiredis (0.14) reads RESP2 only, and
// its reader copies every bulk string into a freshly allocated reply object. The proxy forwards most requests
// and replies as the bytes it received, so all it needs is where a message ends and where its arguments lie;
// the scanner gives exactly that without allocating (see tests/bench/resp_bench.cc for the measurements).
// hiredis stays in use where a program is a plain client (integration tests, orchestrator control
// connections).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace slotshift::resp {

enum class Type : std::uint8_t {
  kSimpleString,    // +OK
  kError,           // -ERR ...
  kInteger,         // :1
  kBulkString,      // $3 foo ($-1 is a RESP2 null bulk: `null` set)
  kArray,           // *2 ... (*-1 is a RESP2 null array: `null` set)
  kNull,            // _        (RESP3)
  kBoolean,         // #t / #f  (RESP3)
  kDouble,          // ,1.5     (RESP3)
  kBigNumber,       // (123...  (RESP3)
  kBulkError,       // !<len>   (RESP3)
  kVerbatimString,  // =<len> txt:...  (RESP3)
  kMap,             // %<n>     (RESP3; 2n elements, key then value)
  kSet,             // ~<n>     (RESP3)
  kAttribute,       // |<n>     (RESP3; 2n elements, precedes the value it describes)
  kPush,            // ><n>     (RESP3)
};

std::string_view type_name(Type type);

// Bounds that keep a peer from making us allocate or recurse without limit. Defaults follow redis-server:
// proto-max-bulk-len is 512 MB, inline requests are capped at 64 KB, and a multibulk count above 1024*1024 is
// refused by Redis for unauthenticated clients (we apply it to every aggregate).
struct Limits {
  std::size_t max_bulk_len = 512ull * 1024 * 1024;
  std::size_t max_elements = 1024 * 1024;
  std::size_t max_depth = 64;
  std::size_t max_inline_len = 64 * 1024;
};

enum class Status : std::uint8_t {
  kComplete,    // one whole message is in the buffer
  kIncomplete,  // more bytes are needed; call again with the same bytes plus more
  kError,  // the input is not valid RESP (or breaks a limit); error() says why. The connection is unusable.
};

// A byte range inside the buffer the scanner was given.
struct Slice {
  std::size_t offset = 0;
  std::size_t length = 0;
};

// Finds where the next message ends in a buffer that the caller owns and keeps growing.
//
// Resumable: after kIncomplete the scanner remembers how far it got, so a 100 MB bulk string arriving in 64
// KB reads is walked once, not once per read. The caller must pass the same bytes again (the buffer may have
// been reallocated; only offsets are kept), followed by whatever arrived since. After kComplete, the message
// occupies buf[0, size()); the caller drops those bytes and calls reset() before scanning the next one.
class Scanner {
 public:
  enum class Mode : std::uint8_t {
    // Client to server: a multibulk of bulk strings, or an inline command line. Errors use Redis's own
    // wording
    // ("Protocol error: invalid bulk length", ...) so clients see what a real server would say.
    kRequest,
    // Server to client: any RESP2 or RESP3 value, nested. Inline is not allowed.
    kReply,
  };

  explicit Scanner(Mode mode, Limits limits = {});

  Status scan(std::string_view buf);
  void reset();

  // Valid after kComplete.
  std::size_t size() const { return pos_; }
  // The type of the outermost value (after any attribute). Valid after kComplete.
  Type type() const { return top_type_; }
  // Requests only: the command's arguments. An empty inline line is a complete request with no arguments
  // (Redis skips it). Bulk arguments are slices of the caller's buffer; inline arguments with quotes or
  // escapes are decoded into storage the scanner owns, so use args() to resolve them.
  std::size_t argc() const { return args_.size(); }
  std::vector<std::string_view> args(std::string_view buf) const;
  void args(std::string_view buf, std::vector<std::string_view>& out) const;  // reuses `out`
  std::string_view arg(std::string_view buf, std::size_t i) const;
  bool is_inline() const { return inline_; }
  // After kIncomplete: the buffer size at which the bulk string being read will be complete, or 0 when no
  // bulk is in progress. A connection reserves that much once instead of growing its buffer read by read (for
  // an 8 MB value in 16 KB reads, that is the difference between 1.2 ms and 5 ms; see
  // tests/bench/resp_bench.cc).
  std::size_t size_hint() const { return in_bulk_ ? pos_ + pending_bulk_ + 2 : 0; }

  // Valid after kError: a message for the peer, without the leading '-' and trailing CRLF.
  const std::string& error() const { return error_; }

 private:
  Status scan_request(std::string_view buf);
  Status scan_inline(std::string_view buf);
  Status scan_reply(std::string_view buf);
  Status fail(std::string message);
  // Reads a CRLF-terminated line starting at pos_. Returns false (and leaves pos_) when the line is not
  // complete.
  bool read_line(std::string_view buf, std::string_view& line, std::size_t& next);
  // Called after each complete value: pops finished aggregates. Returns true when the top-level message is
  // done.
  bool value_done();

  struct Frame {
    std::size_t remaining;  // elements still expected (for streamed aggregates: SIZE_MAX until '.')
    bool attribute;         // an attribute frame does not count as a value of its parent
    bool streamed;          // *? ~? %? >? |? : ends with ".\r\n"
  };

  Mode mode_;
  Limits limits_;
  std::size_t pos_ = 0;
  std::size_t pending_bulk_ = 0;  // bytes (plus CRLF) of a bulk body still expected at pos_
  bool in_bulk_ = false;
  bool in_streamed_string_ = false;  // between "$?" and ";0"
  Type pending_type_ = Type::kBulkString;
  Type top_type_ = Type::kSimpleString;
  bool top_type_set_ = false;
  bool inline_ = false;
  std::vector<Frame> stack_;
  std::size_t request_remaining_ = 0;  // requests: bulk arguments still expected
  bool request_started_ = false;
  std::vector<Slice> args_;
  std::string inline_storage_;  // decoded inline arguments; args_ then index into this instead of buf
  std::string error_;
};

// A decoded value. Only replies that the proxy must merge or inspect, and control-plane replies
// (CLUSTER SHARDS, INFO, ...), are decoded; everything else is forwarded as bytes.
struct Value {
  Type type = Type::kNull;
  bool null = false;              // RESP2 null bulk ($-1) or null array (*-1)
  std::string str;                // simple/bulk/verbatim strings, errors, big numbers; doubles as their text
  std::int64_t integer = 0;       // integers; booleans as 0/1
  double number = 0;              // doubles
  std::vector<Value> elements;    // arrays, sets, pushes; maps and attributes as key, value, key, value, ...
  std::vector<Value> attributes;  // an attribute (|) that preceded this value, as key, value, ...

  bool is_error() const { return type == Type::kError || type == Type::kBulkError; }
  bool is_string() const {
    return (type == Type::kSimpleString || type == Type::kBulkString || type == Type::kVerbatimString) &&
           !null;
  }
  bool is_aggregate() const {
    return type == Type::kArray || type == Type::kSet || type == Type::kPush || type == Type::kMap ||
           type == Type::kAttribute;
  }
  // Maps (RESP3) and RESP2 arrays of alternating keys and values alike: the value whose key equals `key`, or
  // null.
  const Value* find(std::string_view key) const;
};

// Decodes one complete message that a Scanner in kReply mode has accepted (so it is known to be well formed
// and within limits). `message` must be exactly the message's bytes.
Value decode(std::string_view message);

// The elements of one complete aggregate reply (array, set or push; a map gives keys and values alternately)
// as slices of `message`, for merging replies without decoding them. False when `message` is not an aggregate
// or a null array.
bool aggregate_elements(std::string_view message, std::vector<std::string_view>& out);

// Scans and decodes in one call: for control connections and tests. Returns kIncomplete or kError like the
// scanner; on kComplete `consumed` is the message's size.
Status parse_reply(std::string_view buf, Value& out, std::size_t& consumed, std::string* error = nullptr,
                   Limits limits = {});

// Encoder: appends wire bytes to `out`.
void append_simple(std::string& out, std::string_view s);
void append_error(std::string& out, std::string_view message);  // message without '-' and CRLF
void append_integer(std::string& out, std::int64_t n);
void append_bulk(std::string& out, std::string_view s);
// Text for people to read (INFO, CLIENT LIST, CLIENT INFO), as Redis answers it: a bulk string in RESP2, a
// verbatim string of format "txt" in RESP3.
void append_text(std::string& out, std::string_view text, int protocol);
void append_null_bulk(std::string& out);                                     // $-1 (RESP2)
void append_null(std::string& out);                                          // _ (RESP3)
void append_aggregate_header(std::string& out, char marker, std::size_t n);  // '*', '%', '~', '>', '|'
void append_array_header(std::string& out, std::size_t n);
void append_command(std::string& out, const std::vector<std::string_view>& args);
void append_command(std::string& out, std::initializer_list<std::string_view> args);
void encode(std::string& out, const Value& value);
std::string encode(const Value& value);

}  // namespace slotshift::resp
