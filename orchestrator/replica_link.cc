#include "orchestrator/replica_link.h"

#include <sys/socket.h>
#include <algorithm>
#include <charconv>
#include <cstring>
#include <vector>

#include "common/resp.h"

namespace slotshift {
namespace {

constexpr std::size_t kEofMarkLength = 40;
constexpr auto kAckInterval = std::chrono::seconds(1);
// Until the master has started the stream after a diskless payload (it waits for an ACK it accepts).
constexpr auto kEagerAckInterval = std::chrono::milliseconds(20);

bool parse_i64(std::string_view s, std::int64_t& out) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

}  // namespace

ReplicaLink::~ReplicaLink() {
  stop();
}

bool ReplicaLink::fail(std::string message) {
  error_ = options_.source.str() + ": " + std::move(message);
  socket_.close();
  return false;
}

bool ReplicaLink::send_command(std::initializer_list<std::string_view> args) {
  std::string wire;
  resp::append_command(wire, args);
  std::lock_guard lock(write_mu_);
  if (!socket_.write_all(wire, Clock::now() + options_.step_timeout)) return fail(socket_.reason());
  return true;
}

bool ReplicaLink::read_line(std::string& line, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    // A lone "\n" is a keepalive; it restarts the deadline, since it proves the master is working on it.
    while (!inbuf_.empty() && inbuf_.front() == '\n') {
      inbuf_.erase(0, 1);
      deadline = Clock::now() + timeout;
    }
    if (const auto end = inbuf_.find("\r\n"); end != std::string::npos) {
      line = inbuf_.substr(0, end);
      inbuf_.erase(0, end + 2);
      return true;
    }
    if (inbuf_.size() > 64 * 1024) return fail("a handshake reply longer than 64 KB");
    char buf[4096];
    const long n = socket_.read_some(buf, sizeof buf, deadline);
    if (n <= 0) return fail(socket_.reason());
    bytes_received_ += static_cast<std::uint64_t>(n);
    inbuf_.append(buf, static_cast<std::size_t>(n));
  }
}

bool ReplicaLink::expect_ok(std::initializer_list<std::string_view> args, const char* what) {
  if (!send_command(args)) return false;
  std::string line;
  if (!read_line(line, options_.step_timeout)) return false;
  if (line == "+OK" || line == "+PONG") return true;
  if (line.starts_with("-")) return fail(std::string(what) + " refused: " + line.substr(1));
  return fail(std::string(what) + ": unexpected reply '" + line + "'");
}

bool ReplicaLink::start(const ReplicaLinkOptions& options) {
  options_ = options;
  error_.clear();
  if (!socket_.connect(options_.source, Clock::now() + options_.step_timeout, options_.credentials.tls.get()))
    return fail("cannot connect: " + socket_.reason());
  if (const auto& c = options_.credentials; !c.password.empty()) {
    if (c.user.empty()) {
      if (!expect_ok({"AUTH", c.password}, "AUTH")) return false;
    } else if (!expect_ok({"AUTH", c.user, c.password}, "AUTH")) {
      return false;
    }
  }
  if (!send_command({"PING"})) return false;
  std::string line;
  if (!read_line(line, options_.step_timeout)) return false;
  if (line.starts_with("-NOAUTH"))
    return fail("the source needs a password (" + line.substr(1) +
                "): give --password (and --user for an ACL user)");
  if (line.starts_with("-")) return fail("PING refused: " + line.substr(1));
  if (const auto& c = options_.credentials; !c.client_name.empty()) {
    if (!expect_ok({"CLIENT", "SETNAME", c.client_name}, "CLIENT SETNAME")) return false;
    // After the name: a move that took the lease over after this check closes the link (move_lease.h).
    if (auto why = refused_by_lease(c); !why.empty()) return fail(why);
  }
  const std::string port = std::to_string(socket_.local_port());
  if (!expect_ok({"REPLCONF", "listening-port", port}, "REPLCONF listening-port")) return false;
  if (options_.diskless) {
    if (!expect_ok({"REPLCONF", "capa", "eof", "capa", "psync2"}, "REPLCONF capa")) return false;
  } else if (!expect_ok({"REPLCONF", "capa", "psync2"}, "REPLCONF capa")) {
    return false;
  }

  if (!options_.announce_version.empty() &&
      !expect_ok({"REPLCONF", "version", options_.announce_version}, "REPLCONF version"))
    return false;

  // PSYNC ? -1 asks for a full resynchronisation. A diskless master answers only once the snapshot starts
  // (repl-diskless-sync-delay, 5 s by default); until then it sends "\n" keepalives.
  if (!send_command({"PSYNC", "?", "-1"})) return false;
  if (!read_line(line, options_.step_timeout + std::chrono::seconds(30))) return false;
  if (line.starts_with("-")) return fail("PSYNC refused: " + line.substr(1));
  if (!line.starts_with("+FULLRESYNC ")) return fail("PSYNC: expected +FULLRESYNC, got '" + line + "'");
  {
    const std::string_view rest = std::string_view(line).substr(12);
    const auto space = rest.find(' ');
    if (space == std::string_view::npos || !parse_i64(rest.substr(space + 1), initial_offset_))
      return fail("PSYNC: malformed reply '" + line + "'");
    replid_ = std::string(rest.substr(0, space));
  }
  if (!read_payload_header()) return false;

  spool_ = std::make_unique<Spool>(options_.spool_memory, options_.spool_dir);
  applied_ = 0;
  received_offset_ = initial_offset_;
  stopping_ = false;
  // Bytes that came with the header belong to the payload.
  std::string early;
  early.swap(inbuf_);
  note_received(early.data(), early.size());
  if (!spool_->push(early)) return fail(spool_->error());
  receiver_ = std::thread([this] { receive_loop(); });
  return true;
}

bool ReplicaLink::read_payload_header() {
  std::string line;
  // A disk-based snapshot is first written to a file: the header comes when the fork is done, which takes as
  // long as the dataset needs. The master's keepalives keep resetting the deadline meanwhile.
  if (!read_line(line, options_.idle_timeout)) return false;
  if (line.starts_with("-")) return fail("the master refused the snapshot: " + line.substr(1));
  if (!line.starts_with("$")) return fail("expected the snapshot's header, got '" + line.substr(0, 80) + "'");
  if (line.starts_with("$EOF:")) {
    eof_mark_ = line.substr(5);
    if (eof_mark_.size() != kEofMarkLength) return fail("malformed diskless snapshot header '" + line + "'");
    payload_length_ = -1;
  } else if (!parse_i64(std::string_view(line).substr(1), payload_length_) || payload_length_ < 0) {
    return fail("malformed snapshot header '" + line + "'");
  }
  return true;
}

// Receiver thread: tracks where the payload ends (to start ACKing and counting stream offsets) without
// parsing anything.
void ReplicaLink::note_received(const char* data, std::size_t n) {
  bytes_received_.fetch_add(n, std::memory_order_relaxed);
  if (payload_complete_.load(std::memory_order_relaxed)) {
    received_offset_.fetch_add(static_cast<std::int64_t>(n), std::memory_order_relaxed);
    return;
  }
  if (payload_length_ >= 0) {
    const std::uint64_t need = static_cast<std::uint64_t>(payload_length_) - payload_seen_;
    if (n < need) {
      payload_seen_ += n;
      return;
    }
    payload_seen_ += need;
    received_offset_.fetch_add(static_cast<std::int64_t>(n - need), std::memory_order_relaxed);
    payload_complete_.store(true, std::memory_order_release);
    return;
  }
  // Diskless: the master sends nothing after the mark until it has our ACK, so the mark is always the last
  // 40 bytes of some read. (This is how redis-server's own replica finds it.)
  payload_seen_ += n;
  if (n >= kEofMarkLength) {
    tail_.assign(data + n - kEofMarkLength, kEofMarkLength);
  } else {
    tail_.append(data, n);
    if (tail_.size() > kEofMarkLength) tail_.erase(0, tail_.size() - kEofMarkLength);
  }
  if (tail_ == eof_mark_) payload_complete_.store(true, std::memory_order_release);
}

void ReplicaLink::send_ack() {
  std::string wire;
  const std::string offset = std::to_string(applied_.load(std::memory_order_relaxed));
  resp::append_command(wire, {"REPLCONF", "ACK", offset});
  std::lock_guard lock(write_mu_);
  // A failed ACK shows up as a read error on the receiver soon after; nothing to do here.
  if (socket_.is_open()) socket_.write_all(wire, Clock::now() + std::chrono::seconds(1));
}

void ReplicaLink::receive_loop() {
  std::vector<char> buf(256 * 1024);
  auto last_byte = Clock::now();
  auto next_ack = Clock::now();
  Clock::time_point eager_until{};
  bool stream_started = false;
  std::string why;
  while (!stopping_.load(std::memory_order_relaxed)) {
    const bool complete = payload_complete_.load(std::memory_order_relaxed);
    if (complete && eager_until == Clock::time_point{}) eager_until = Clock::now() + std::chrono::seconds(2);
    if (complete && Clock::now() >= next_ack) {
      send_ack();
      const bool eager = !stream_started && Clock::now() < eager_until;
      next_ack = Clock::now() + (eager ? std::chrono::milliseconds(kEagerAckInterval)
                                       : std::chrono::milliseconds(kAckInterval));
    }
    const auto wake = complete ? next_ack : Clock::now() + std::chrono::milliseconds(200);
    const long n = socket_.read_some(buf.data(), buf.size(), wake);
    if (n < 0) {
      why = stopping_ ? "the link was stopped" : "replica link lost: " + socket_.error();
      break;
    }
    if (n == 0) {
      if (Clock::now() - last_byte > options_.idle_timeout) {
        why = "replica link: nothing from " + options_.source.str() + " for " +
              std::to_string(options_.idle_timeout.count()) + " s";
        break;
      }
      continue;
    }
    last_byte = Clock::now();
    const std::int64_t before = received_offset_.load(std::memory_order_relaxed);
    note_received(buf.data(), static_cast<std::size_t>(n));
    if (!stream_started && payload_complete_.load(std::memory_order_relaxed) &&
        received_offset_.load(std::memory_order_relaxed) > before) {
      stream_started = true;
      next_ack = Clock::now();  // ACK at once, then every second
    }
    if (!spool_->push(std::string_view(buf.data(), static_cast<std::size_t>(n)))) {
      why = spool_->error();
      break;
    }
  }
  spool_->close(why);
}

void ReplicaLink::stop(const std::string& why) {
  stopping_ = true;
  {
    std::lock_guard lock(write_mu_);
    // shutdown() wakes the receiver's poll (with TLS too: its next SSL_read then meets the end of the
    // stream); the descriptor, and the SSL over it, are closed after the join.
    if (socket_.is_open()) ::shutdown(socket_.fd(), SHUT_RDWR);
  }
  if (receiver_.joinable()) receiver_.join();
  socket_.close();
  if (spool_) spool_->close(why);
}

}  // namespace slotshift
