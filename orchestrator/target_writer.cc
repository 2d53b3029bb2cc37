#include "orchestrator/target_writer.h"

#include <poll.h>

#include <algorithm>

namespace slotshift {
namespace {

constexpr std::size_t kReadChunk = 256 * 1024;
// Bytes gathered before a write is attempted, so that small operations go out in few system calls.
constexpr std::size_t kWriteBatch = 64 * 1024;

bool is_error_reply(std::string_view message) {
  return !message.empty() && (message[0] == '-' || message[0] == '!');
}

std::string error_text(std::string_view message) {
  // "-ERR ...\r\n" or "!<len>\r\n...\r\n": the text without framing, for messages.
  if (message.empty()) return {};
  if (message[0] == '-') return std::string(message.substr(1, message.size() - 3));
  const auto body = message.find("\r\n");
  return std::string(message.substr(body + 2, message.size() - body - 4));
}

}  // namespace

bool TargetWriter::fail(std::string message) {
  error_ = options_.target.str() + ": " + std::move(message);
  socket_.close();
  return false;
}

bool TargetWriter::connect(const TargetWriterOptions& options, Done done) {
  options_ = options;
  done_ = std::move(done);
  if (!socket_.connect(options_.target, Clock::now() + options_.connect_timeout,
                       options_.credentials.tls.get()))
    return fail("cannot connect: " + socket_.reason());
  const auto& c = options_.credentials;
  std::string wire;
  std::uint32_t replies = 0;
  if (!c.password.empty()) {
    if (c.user.empty())
      resp::append_command(wire, {"AUTH", c.password});
    else
      resp::append_command(wire, {"AUTH", c.user, c.password});
    ++replies;
  }
  if (!c.client_name.empty()) {
    resp::append_command(wire, {"CLIENT", "SETNAME", c.client_name});
    ++replies;
  }
  if (replies > 0) {
    std::string refused;
    const auto saved = std::move(done_);
    done_ = [&](std::uint64_t, std::string_view e) {
      if (refused.empty()) refused = e;  // the first: a refused AUTH makes the name refused too
    };
    const bool ok = submit(wire, replies, 0) && drain();
    done_ = saved;
    if (!ok) return false;
    if (!refused.empty()) return fail("AUTH or CLIENT SETNAME refused: " + refused);
  }
  // After the name: a move that took the lease over after this check closes the connection (move_lease.h).
  if (auto why = refused_by_lease(c); !why.empty()) return fail(why);
  return true;
}

bool TargetWriter::submit(std::string_view wire, std::uint32_t replies, std::uint64_t tag) {
  if (!socket_.is_open()) return fail(error_.empty() ? "not connected" : error_);
  out_.append(wire);
  inflight_.push_back(Pending{tag, replies, wire.size(), {}});
  inflight_bytes_ += wire.size();
  if (inflight_.size() == 1) last_progress_ = Clock::now();
  if (out_.size() - out_offset_ >= kWriteBatch && !pump(false)) return false;
  while (inflight_.size() > options_.max_ops_in_flight || inflight_bytes_ > options_.max_bytes_in_flight)
    if (!pump(true)) return false;
  return true;
}

bool TargetWriter::drain() {
  while (!inflight_.empty())
    if (!pump(true)) return false;
  return true;
}

bool TargetWriter::pump(bool wait) {
  bool progress = false;
  if (out_offset_ < out_.size()) {
    const long n = socket_.write_some(std::string_view(out_).substr(out_offset_));
    if (n < 0) return fail(socket_.reason());
    out_offset_ += static_cast<std::size_t>(n);
    bytes_written_ += static_cast<std::uint64_t>(n);
    if (out_offset_ == out_.size()) {
      out_.clear();
      out_offset_ = 0;
    } else if (out_offset_ > (1u << 20)) {
      out_.erase(0, out_offset_);
      out_offset_ = 0;
    }
    progress |= n > 0;
  }
  // Read whatever is there without waiting.
  for (;;) {
    if (in_offset_ > 0 && in_offset_ == in_.size()) {
      in_.clear();
      in_offset_ = 0;
    }
    const std::size_t old = in_.size();
    in_.resize(old + kReadChunk);
    const long n = socket_.read_some(in_.data() + old, kReadChunk, Clock::now());
    in_.resize(old + static_cast<std::size_t>(std::max(n, 0L)));
    if (n < 0) return fail(socket_.reason());
    if (n == 0) break;
    progress = true;
    for (;;) {
      const std::string_view rest = std::string_view(in_).substr(in_offset_);
      const auto status = scanner_.scan(rest);
      if (status == resp::Status::kIncomplete) break;
      if (status == resp::Status::kError) return fail("malformed reply: " + scanner_.error());
      if (!on_reply(rest.substr(0, scanner_.size()))) return false;
      in_offset_ += scanner_.size();
      scanner_.reset();
    }
    if (static_cast<std::size_t>(n) < kReadChunk) break;
  }
  if (in_offset_ > (4u << 20)) {
    in_.erase(0, in_offset_);
    in_offset_ = 0;
  }
  if (progress) {
    last_progress_ = Clock::now();
    return true;
  }
  if (!wait) return true;
  if (Clock::now() - last_progress_ > options_.reply_timeout)
    return fail("no reply for " + std::to_string(options_.reply_timeout.count()) + " ms with " +
                std::to_string(inflight_.size()) + " operations in flight");
  const short revents = socket_.wait(out_offset_ < out_.size(), last_progress_ + options_.reply_timeout);
  if (revents & (POLLERR | POLLNVAL)) return fail("connection error");
  return true;
}

bool TargetWriter::on_reply(std::string_view message) {
  if (inflight_.empty()) return fail("a reply nobody asked for: " + std::string(message.substr(0, 80)));
  auto& op = inflight_.front();
  if (op.error.empty()) {
    if (is_error_reply(message)) {
      op.error = error_text(message);
    } else if (message[0] == '*') {
      // EXEC: one reply per queued command; a null array means the transaction was aborted.
      if (message.starts_with("*-1"))
        op.error = "EXEC returned null (transaction aborted)";
      else if (resp::aggregate_elements(message, elements_))
        for (const auto e : elements_)
          if (is_error_reply(e)) {
            op.error = error_text(e);
            break;
          }
    }
  }
  if (--op.replies_left == 0) {
    const Pending done = std::move(op);
    inflight_.pop_front();
    inflight_bytes_ -= done.bytes;
    done_(done.tag, done.error);
  }
  return true;
}

}  // namespace slotshift
