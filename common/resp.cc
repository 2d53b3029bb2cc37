#include "common/resp.h"

#include <charconv>
#include <cstdio>
#include <cstring>
#include <limits>

namespace slotshift::resp {
namespace {

// Strict decimal integer: an optional '-', then digits, nothing else, no overflow. Redis's own lengths and
// integers never have a '+', spaces or leading zeros beyond "0", but we only insist on what matters for
// safety.
bool parse_int(std::string_view s, std::int64_t& out) {
  if (s.empty()) return false;
  const char* first = s.data();
  const char* last = s.data() + s.size();
  if (*first == '+') return false;
  const auto [ptr, ec] = std::from_chars(first, last, out);
  return ec == std::errc() && ptr == last;
}

bool is_c_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Splits an inline command line the way redis-server does (sdssplitargs): whitespace separates arguments;
// "double quotes" take \n \r \t \b \a \\ \" and \xHH escapes; 'single quotes' take \' only; a closing quote
// must be followed by whitespace or the end of the line. Decoded arguments are appended to `storage`; their
// places are appended to `args`. Returns false for unbalanced quotes.
bool split_inline(std::string_view line, std::string& storage, std::vector<Slice>& args) {
  // Redis works on a C string here: a NUL byte ends the line.
  if (const auto nul = line.find('\0'); nul != std::string_view::npos) line = line.substr(0, nul);
  std::size_t p = 0;
  const std::size_t n = line.size();
  auto at = [&](std::size_t i) { return i < n ? line[i] : '\0'; };
  while (true) {
    while (p < n && is_c_space(line[p]))
      ++p;
    if (p >= n) return true;
    const std::size_t start = storage.size();
    bool in_double = false, in_single = false, done = false;
    while (!done) {
      const char c = at(p);
      if (in_double) {
        if (c == '\\' && at(p + 1) == 'x' && hex_value(at(p + 2)) >= 0 && hex_value(at(p + 3)) >= 0) {
          storage.push_back(static_cast<char>(hex_value(at(p + 2)) * 16 + hex_value(at(p + 3))));
          p += 3;
        } else if (c == '\\' && p + 1 < n) {
          ++p;
          switch (line[p]) {
            case 'n':
              storage.push_back('\n');
              break;
            case 'r':
              storage.push_back('\r');
              break;
            case 't':
              storage.push_back('\t');
              break;
            case 'b':
              storage.push_back('\b');
              break;
            case 'a':
              storage.push_back('\a');
              break;
            default:
              storage.push_back(line[p]);
              break;
          }
        } else if (c == '"') {
          if (p + 1 < n && !is_c_space(line[p + 1])) return false;
          done = true;
        } else if (p >= n) {
          return false;
        } else {
          storage.push_back(c);
        }
      } else if (in_single) {
        if (c == '\\' && at(p + 1) == '\'') {
          ++p;
          storage.push_back('\'');
        } else if (c == '\'') {
          if (p + 1 < n && !is_c_space(line[p + 1])) return false;
          done = true;
        } else if (p >= n) {
          return false;
        } else {
          storage.push_back(c);
        }
      } else if (p >= n || is_c_space(c)) {
        done = true;
      } else if (c == '"') {
        in_double = true;
      } else if (c == '\'') {
        in_single = true;
      } else {
        storage.push_back(c);
      }
      if (p < n) ++p;
    }
    args.push_back(Slice{start, storage.size() - start});
  }
}

}  // namespace

std::string_view type_name(Type type) {
  switch (type) {
    case Type::kSimpleString:
      return "simple string";
    case Type::kError:
      return "error";
    case Type::kInteger:
      return "integer";
    case Type::kBulkString:
      return "bulk string";
    case Type::kArray:
      return "array";
    case Type::kNull:
      return "null";
    case Type::kBoolean:
      return "boolean";
    case Type::kDouble:
      return "double";
    case Type::kBigNumber:
      return "big number";
    case Type::kBulkError:
      return "bulk error";
    case Type::kVerbatimString:
      return "verbatim string";
    case Type::kMap:
      return "map";
    case Type::kSet:
      return "set";
    case Type::kAttribute:
      return "attribute";
    case Type::kPush:
      return "push";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------------------------
// Scanner

Scanner::Scanner(Mode mode, Limits limits) : mode_(mode), limits_(limits) {}

void Scanner::reset() {
  pos_ = 0;
  pending_bulk_ = 0;
  in_bulk_ = false;
  in_streamed_string_ = false;
  top_type_set_ = false;
  inline_ = false;
  stack_.clear();
  request_remaining_ = 0;
  request_started_ = false;
  args_.clear();
  inline_storage_.clear();
  error_.clear();
}

Status Scanner::fail(std::string message) {
  error_ = std::move(message);
  return Status::kError;
}

std::vector<std::string_view> Scanner::args(std::string_view buf) const {
  std::vector<std::string_view> out;
  out.reserve(args_.size());
  for (std::size_t i = 0; i < args_.size(); ++i)
    out.push_back(arg(buf, i));
  return out;
}

void Scanner::args(std::string_view buf, std::vector<std::string_view>& out) const {
  out.clear();
  for (std::size_t i = 0; i < args_.size(); ++i)
    out.push_back(arg(buf, i));
}

std::string_view Scanner::arg(std::string_view buf, std::size_t i) const {
  const Slice s = args_[i];
  return (inline_ ? std::string_view(inline_storage_) : buf).substr(s.offset, s.length);
}

bool Scanner::read_line(std::string_view buf, std::string_view& line, std::size_t& next) {
  const void* cr = std::memchr(buf.data() + pos_, '\r', buf.size() - pos_);
  if (!cr) return false;
  const std::size_t at = static_cast<std::size_t>(static_cast<const char*>(cr) - buf.data());
  if (at + 1 >= buf.size()) return false;
  line = buf.substr(pos_, at - pos_);
  next = at + 2;
  return true;
}

Status Scanner::scan(std::string_view buf) {
  return mode_ == Mode::kRequest ? scan_request(buf) : scan_reply(buf);
}

Status Scanner::scan_request(std::string_view buf) {
  std::string_view line;
  std::size_t next = 0;
  if (!request_started_) {
    if (buf.empty()) return Status::kIncomplete;
    if (buf[0] != '*') {
      inline_ = true;
      return scan_inline(buf);
    }
    if (!read_line(buf, line, next)) {
      if (buf.size() > limits_.max_inline_len) return fail("Protocol error: too big mbulk count string");
      return Status::kIncomplete;
    }
    if (buf[next - 1] != '\n') return fail("Protocol error: expected CRLF after the multibulk count");
    std::int64_t count = 0;
    if (!parse_int(line.substr(1), count) || count > static_cast<std::int64_t>(limits_.max_elements)) {
      return fail("Protocol error: invalid multibulk length");
    }
    pos_ = next;
    top_type_ = Type::kArray;
    if (count <= 0)
      return Status::kComplete;  // "*0" and "*-1" are skipped by Redis: a request with no arguments
    request_remaining_ = static_cast<std::size_t>(count);
    args_.reserve(std::min<std::size_t>(request_remaining_, 1024));
    request_started_ = true;
  }
  while (request_remaining_ > 0) {
    if (!in_bulk_) {
      if (pos_ >= buf.size()) return Status::kIncomplete;
      if (buf[pos_] != '$') {
        return fail(std::string("Protocol error: expected '$', got '") + buf[pos_] + "'");
      }
      if (!read_line(buf, line, next)) {
        if (buf.size() - pos_ > limits_.max_inline_len)
          return fail("Protocol error: too big bulk count string");
        return Status::kIncomplete;
      }
      if (buf[next - 1] != '\n') return fail("Protocol error: expected CRLF after the bulk length");
      std::int64_t len = 0;
      if (!parse_int(line.substr(1), len) || len < 0 ||
          static_cast<std::uint64_t>(len) > limits_.max_bulk_len) {
        return fail("Protocol error: invalid bulk length");
      }
      pending_bulk_ = static_cast<std::size_t>(len);
      in_bulk_ = true;
      pos_ = next;
    }
    if (buf.size() - pos_ < pending_bulk_ + 2) return Status::kIncomplete;
    if (buf[pos_ + pending_bulk_] != '\r' || buf[pos_ + pending_bulk_ + 1] != '\n') {
      return fail("Protocol error: expected CRLF after the bulk data");
    }
    args_.push_back(Slice{pos_, pending_bulk_});
    pos_ += pending_bulk_ + 2;
    in_bulk_ = false;
    --request_remaining_;
  }
  return Status::kComplete;
}

Status Scanner::scan_inline(std::string_view buf) {
  const void* nl = std::memchr(buf.data(), '\n', buf.size());
  if (!nl) {
    if (buf.size() > limits_.max_inline_len) return fail("Protocol error: too big inline request");
    return Status::kIncomplete;
  }
  const std::size_t end = static_cast<std::size_t>(static_cast<const char*>(nl) - buf.data());
  if (end > limits_.max_inline_len) return fail("Protocol error: too big inline request");
  std::string_view line = buf.substr(0, end);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  args_.clear();
  inline_storage_.clear();
  if (!split_inline(line, inline_storage_, args_))
    return fail("Protocol error: unbalanced quotes in request");
  pos_ = end + 1;
  top_type_ = Type::kArray;
  return Status::kComplete;
}

bool Scanner::value_done() {
  while (!stack_.empty()) {
    Frame& f = stack_.back();
    if (f.streamed) return false;
    if (--f.remaining > 0) return false;
    const bool attribute = f.attribute;
    stack_.pop_back();
    // A finished attribute is not a value: the value it annotates comes next and counts for the parent.
    if (attribute) return false;
  }
  return true;
}

Status Scanner::scan_reply(std::string_view buf) {
  std::string_view line;
  std::size_t next = 0;
  while (true) {
    if (in_bulk_) {
      if (buf.size() - pos_ < pending_bulk_ + 2) return Status::kIncomplete;
      if (buf[pos_ + pending_bulk_] != '\r' || buf[pos_ + pending_bulk_ + 1] != '\n') {
        return fail("Protocol error: expected CRLF after bulk data");
      }
      pos_ += pending_bulk_ + 2;
      in_bulk_ = false;
      if (in_streamed_string_) continue;  // a chunk of a streamed string; more chunks follow until ";0"
      if (value_done()) return Status::kComplete;
      continue;
    }
    if (pos_ >= buf.size()) return Status::kIncomplete;
    if (!read_line(buf, line, next)) {
      if (buf.size() - pos_ > limits_.max_inline_len) return fail("Protocol error: too long line in reply");
      return Status::kIncomplete;
    }
    if (buf[next - 1] != '\n') return fail("Protocol error: expected CRLF");
    if (line.empty()) return fail("Protocol error: empty line in reply");
    const char marker = line[0];
    const std::string_view body = line.substr(1);
    pos_ = next;

    if (in_streamed_string_) {
      std::int64_t len = 0;
      if (marker != ';' || !parse_int(body, len) || len < 0 ||
          static_cast<std::uint64_t>(len) > limits_.max_bulk_len) {
        return fail("Protocol error: bad chunk in a streamed string");
      }
      if (len == 0) {
        in_streamed_string_ = false;
        if (value_done()) return Status::kComplete;
        continue;
      }
      pending_bulk_ = static_cast<std::size_t>(len);
      in_bulk_ = true;
      continue;
    }

    if (marker == '.' && !stack_.empty() && stack_.back().streamed) {
      if (!body.empty()) return fail("Protocol error: bad end of a streamed aggregate");
      const bool attribute = stack_.back().attribute;
      stack_.pop_back();
      if (attribute) continue;
      if (value_done()) return Status::kComplete;
      continue;
    }

    auto set_top = [&](Type t) {
      if (stack_.empty() && !top_type_set_) {
        top_type_ = t;
        top_type_set_ = true;
      }
    };

    std::int64_t n = 0;
    switch (marker) {
      case '+':
      case '-':
      case '(':
        set_top(marker == '+' ? Type::kSimpleString : marker == '-' ? Type::kError : Type::kBigNumber);
        if (value_done()) return Status::kComplete;
        break;
      case ':':
        if (!parse_int(body, n)) return fail("Protocol error: invalid integer");
        set_top(Type::kInteger);
        if (value_done()) return Status::kComplete;
        break;
      case '_':
        if (!body.empty()) return fail("Protocol error: invalid null");
        set_top(Type::kNull);
        if (value_done()) return Status::kComplete;
        break;
      case '#':
        if (body != "t" && body != "f") return fail("Protocol error: invalid boolean");
        set_top(Type::kBoolean);
        if (value_done()) return Status::kComplete;
        break;
      case ',':
        if (body.empty()) return fail("Protocol error: invalid double");
        set_top(Type::kDouble);
        if (value_done()) return Status::kComplete;
        break;
      case '$':
      case '!':
      case '=': {
        const Type t = marker == '$'   ? Type::kBulkString
                       : marker == '!' ? Type::kBulkError
                                       : Type::kVerbatimString;
        set_top(t);
        if (marker == '$' && body == "?") {
          in_streamed_string_ = true;
          break;
        }
        if (!parse_int(body, n)) return fail("Protocol error: invalid bulk length");
        if (n == -1 && marker == '$') {
          if (value_done()) return Status::kComplete;
          break;
        }
        if (n < 0 || static_cast<std::uint64_t>(n) > limits_.max_bulk_len) {
          return fail("Protocol error: invalid bulk length");
        }
        pending_bulk_ = static_cast<std::size_t>(n);
        in_bulk_ = true;
        break;
      }
      case '*':
      case '%':
      case '~':
      case '>':
      case '|': {
        const bool attribute = marker == '|';
        if (!attribute) {
          set_top(marker == '*'   ? Type::kArray
                  : marker == '%' ? Type::kMap
                  : marker == '~' ? Type::kSet
                                  : Type::kPush);
        }
        if (stack_.size() >= limits_.max_depth) return fail("Protocol error: nesting too deep");
        if (body == "?") {
          stack_.push_back(Frame{std::numeric_limits<std::size_t>::max(), attribute, true});
          break;
        }
        if (!parse_int(body, n)) return fail("Protocol error: invalid multibulk length");
        if (n == -1 && marker == '*') {
          if (value_done()) return Status::kComplete;
          break;
        }
        if (n < 0 || static_cast<std::uint64_t>(n) > limits_.max_elements) {
          return fail("Protocol error: invalid multibulk length");
        }
        const std::size_t count = static_cast<std::size_t>(n) * ((marker == '%' || attribute) ? 2 : 1);
        if (count == 0) {
          if (attribute) break;
          if (value_done()) return Status::kComplete;
          break;
        }
        stack_.push_back(Frame{count, attribute, false});
        break;
      }
      default: {
        char text[64];
        std::snprintf(text, sizeof text, "Protocol error: unexpected byte 0x%02x in reply",
                      static_cast<unsigned>(static_cast<unsigned char>(marker)));
        return fail(text);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Value tree

const Value* Value::find(std::string_view key) const {
  if (type != Type::kMap && type != Type::kArray && type != Type::kAttribute) return nullptr;
  for (std::size_t i = 0; i + 1 < elements.size(); i += 2) {
    if (elements[i].str == key) return &elements[i + 1];
  }
  return nullptr;
}

namespace {

// Decodes the value at `pos` of a message the scanner has accepted: structure and bounds are known to be
// valid, so this trusts lengths and recursion depth.
class Decoder {
 public:
  explicit Decoder(std::string_view m) : m_(m) {}

  Value value() {
    Value v;
    while (m_[pos_] == '|') {
      Value attr = aggregate(Type::kAttribute);
      for (auto& e : attr.elements)
        v.attributes.push_back(std::move(e));
    }
    const char marker = m_[pos_];
    switch (marker) {
      case '+':
        v.type = Type::kSimpleString;
        v.str = line();
        break;
      case '-':
        v.type = Type::kError;
        v.str = line();
        break;
      case '(':
        v.type = Type::kBigNumber;
        v.str = line();
        break;
      case ':':
        v.type = Type::kInteger;
        parse_int(line(), v.integer);
        break;
      case '_':
        v.type = Type::kNull;
        line();
        break;
      case '#':
        v.type = Type::kBoolean;
        v.integer = line() == "t" ? 1 : 0;
        break;
      case ',': {
        v.type = Type::kDouble;
        v.str = line();
        v.number = v.str == "inf"    ? std::numeric_limits<double>::infinity()
                   : v.str == "-inf" ? -std::numeric_limits<double>::infinity()
                                     : std::strtod(v.str.c_str(), nullptr);
        break;
      }
      case '$':
      case '!':
      case '=':
        bulk(v, marker);
        break;
      case '*':
        v = take_attributes(aggregate(Type::kArray), v);
        break;
      case '%':
        v = take_attributes(aggregate(Type::kMap), v);
        break;
      case '~':
        v = take_attributes(aggregate(Type::kSet), v);
        break;
      case '>':
        v = take_attributes(aggregate(Type::kPush), v);
        break;
      default:
        break;  // unreachable for scanned input
    }
    return v;
  }

  std::size_t pos() const { return pos_; }

 private:
  static Value take_attributes(Value v, Value& from) {
    v.attributes = std::move(from.attributes);
    return v;
  }

  // The rest of the current line after its marker; moves past the CRLF.
  std::string line() {
    const auto cr = m_.find('\r', pos_);
    std::string out(m_.substr(pos_ + 1, cr - pos_ - 1));
    pos_ = cr + 2;
    return out;
  }

  void bulk(Value& v, char marker) {
    v.type = marker == '$' ? Type::kBulkString : marker == '!' ? Type::kBulkError : Type::kVerbatimString;
    const std::string header = line();
    if (header == "?") {
      while (true) {
        std::int64_t len = 0;
        parse_int(line(), len);
        if (len == 0) return;
        v.str.append(m_.substr(pos_, static_cast<std::size_t>(len)));
        pos_ += static_cast<std::size_t>(len) + 2;
      }
    }
    std::int64_t len = 0;
    parse_int(header, len);
    if (len < 0) {
      v.null = true;
      return;
    }
    v.str.assign(m_.substr(pos_, static_cast<std::size_t>(len)));
    pos_ += static_cast<std::size_t>(len) + 2;
  }

  Value aggregate(Type type) {
    Value v;
    v.type = type;
    const std::string header = line();
    if (header == "?") {
      while (m_[pos_] != '.')
        v.elements.push_back(value());
      line();
      return v;
    }
    std::int64_t n = 0;
    parse_int(header, n);
    if (n < 0) {
      v.null = true;
      return v;
    }
    const auto count =
        static_cast<std::size_t>(n) * ((type == Type::kMap || type == Type::kAttribute) ? 2 : 1);
    v.elements.reserve(count);
    for (std::size_t i = 0; i < count; ++i)
      v.elements.push_back(value());
    return v;
  }

  std::string_view m_;
  std::size_t pos_ = 0;
};

}  // namespace

Value decode(std::string_view message) {
  return Decoder(message).value();
}

Status parse_reply(std::string_view buf, Value& out, std::size_t& consumed, std::string* error,
                   Limits limits) {
  Scanner scanner(Scanner::Mode::kReply, limits);
  const Status status = scanner.scan(buf);
  if (status == Status::kError && error) *error = scanner.error();
  if (status != Status::kComplete) return status;
  consumed = scanner.size();
  out = decode(buf.substr(0, consumed));
  return status;
}

bool aggregate_elements(std::string_view message, std::vector<std::string_view>& out) {
  out.clear();
  if (message.empty()) return false;
  const char marker = message[0];
  if (marker != '*' && marker != '~' && marker != '>' && marker != '%') return false;
  const auto cr = message.find('\r');
  std::int64_t n = 0;
  if (cr == std::string_view::npos || !parse_int(message.substr(1, cr - 1), n) || n < 0) return false;
  if (marker == '%') n *= 2;
  std::size_t pos = cr + 2;
  Scanner scanner(Scanner::Mode::kReply);
  out.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    scanner.reset();
    if (pos > message.size() || scanner.scan(message.substr(pos)) != Status::kComplete) return false;
    out.push_back(message.substr(pos, scanner.size()));
    pos += scanner.size();
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Encoder

namespace {

void append_number_line(std::string& out, char marker, std::int64_t n) {
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n);
  out.push_back(marker);
  out.append(digits, end);
  out.append("\r\n");
}

void append_blob(std::string& out, char marker, std::string_view s) {
  append_number_line(out, marker, static_cast<std::int64_t>(s.size()));
  out.append(s);
  out.append("\r\n");
}

}  // namespace

void append_simple(std::string& out, std::string_view s) {
  out.push_back('+');
  out.append(s);
  out.append("\r\n");
}

void append_error(std::string& out, std::string_view message) {
  out.push_back('-');
  out.append(message);
  out.append("\r\n");
}

void append_integer(std::string& out, std::int64_t n) {
  append_number_line(out, ':', n);
}
void append_bulk(std::string& out, std::string_view s) {
  append_blob(out, '$', s);
}
void append_text(std::string& out, std::string_view text, int protocol) {
  if (protocol != 3) return append_bulk(out, text);
  out.append("=").append(std::to_string(text.size() + 4)).append("\r\ntxt:").append(text).append("\r\n");
}
void append_null_bulk(std::string& out) {
  out.append("$-1\r\n");
}
void append_null(std::string& out) {
  out.append("_\r\n");
}

void append_aggregate_header(std::string& out, char marker, std::size_t n) {
  append_number_line(out, marker, static_cast<std::int64_t>(n));
}

void append_array_header(std::string& out, std::size_t n) {
  append_aggregate_header(out, '*', n);
}

void append_command(std::string& out, const std::vector<std::string_view>& args) {
  append_array_header(out, args.size());
  for (auto a : args)
    append_bulk(out, a);
}

void append_command(std::string& out, std::initializer_list<std::string_view> args) {
  append_array_header(out, args.size());
  for (auto a : args)
    append_bulk(out, a);
}

void encode(std::string& out, const Value& v) {
  if (!v.attributes.empty()) {
    append_aggregate_header(out, '|', v.attributes.size() / 2);
    for (const auto& e : v.attributes)
      encode(out, e);
  }
  switch (v.type) {
    case Type::kSimpleString:
      append_simple(out, v.str);
      break;
    case Type::kError:
      append_error(out, v.str);
      break;
    case Type::kInteger:
      append_integer(out, v.integer);
      break;
    case Type::kBulkString:
      if (v.null) {
        append_null_bulk(out);
      } else {
        append_bulk(out, v.str);
      }
      break;
    case Type::kNull:
      append_null(out);
      break;
    case Type::kBoolean:
      out.append(v.integer ? "#t\r\n" : "#f\r\n");
      break;
    case Type::kDouble:
      out.push_back(',');
      if (!v.str.empty()) {
        out.append(v.str);
      } else {
        char text[40];
        std::snprintf(text, sizeof text, "%.17g", v.number);
        out.append(text);
      }
      out.append("\r\n");
      break;
    case Type::kBigNumber:
      out.push_back('(');
      out.append(v.str);
      out.append("\r\n");
      break;
    case Type::kBulkError:
      append_blob(out, '!', v.str);
      break;
    case Type::kVerbatimString:
      append_blob(out, '=', v.str);
      break;
    case Type::kArray:
    case Type::kSet:
    case Type::kPush:
    case Type::kMap:
    case Type::kAttribute: {
      if (v.null) {
        out.append("*-1\r\n");
        break;
      }
      const char marker = v.type == Type::kArray  ? '*'
                          : v.type == Type::kSet  ? '~'
                          : v.type == Type::kPush ? '>'
                          : v.type == Type::kMap  ? '%'
                                                  : '|';
      const bool paired = v.type == Type::kMap || v.type == Type::kAttribute;
      append_aggregate_header(out, marker, paired ? v.elements.size() / 2 : v.elements.size());
      for (const auto& e : v.elements)
        encode(out, e);
      break;
    }
  }
}

std::string encode(const Value& value) {
  std::string out;
  encode(out, value);
  return out;
}

}  // namespace slotshift::resp
